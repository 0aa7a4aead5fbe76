"""Per-step time and peak memory of the multi-GPU modes, A14B-size random experts, under torchrun (any world size N).

Random bf16 experts and text embeddings as in ``bench_a14b.py`` (time does not depend on weight
values; no T5 or VAE in the step timings). The modes use the project's own ``wan.distributed.parallelize``
and ``WanT2V.velocity`` (one step's model output: what a sampling step costs besides the solver):

- ``1gpu``: rank 0 alone, the one-process velocity, no context parallel (the others wait);
- ``ulysses``: Ulysses over all N ranks (what ``--ulysses_size N`` runs);
- ``cfg_parallel``: 2 CFG groups x Ulysses N/2 (``--cfg_parallel --ulysses_size N/2``);
- ``ulysses+fsdp``, ``cfg_parallel+fsdp``: the same with the experts sharded by ``--dit_fsdp`` (rebuilt).

Per mode and size, the seconds of one step of each kind, max over ranks, median of ``--repeats``
after warm-up steps (a CFG and, in the parallel modes, a cond-only step on the half frames):
``cfg_full`` (a CFG step on all latent frames), ``cfg_half`` (a CFG step on the half frames of
half-frame generation's high-noise steps), ``cond_full`` (a cond-only step, as CFG truncation runs;
once in 1gpu, where it is one forward); peak memory of every rank; the largest difference of each
velocity from the
``1gpu`` one; and a 40-step projection (26 high + 14 low) with half-frame generation off and on.
Last, one umT5-XXL-size encode (2 x 512 tokens) with and without ``--t5_fsdp``'s sharding. The JSON
is rewritten after every stage, so a run cut short keeps what it measured.

    torchrun --nproc_per_node 2 scripts/bench_multigpu.py --out multigpu.json      # 2 H200s, ~7 min
    torchrun --nproc_per_node 2 scripts/bench_multigpu.py --modes ulysses,ulysses+fsdp --sizes 832*480 \
        --fsdp_prefetch 2 --out prefetch2.json                                      # one FSDP variant
    torchrun --nproc_per_node 2 scripts/bench_multigpu.py --tiny --device cpu --dtype float32 \\
        --sizes 64*64 --frame_num 9 --out tiny.json                                 # CPU check (gloo)
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_a14b import (  # noqa: E402
    A14B_CONFIG,
    TEXT_TOKENS,
    TINY_OVERRIDES,
    TINY_UMT5,
    UMT5_XXL,
    build_expert,
    build_text_encoder,
    now,
    peak_memory_gb,
    reset_peak_memory,
    step_plan,
    text_embeddings,
)

from wan import distributed  # noqa: E402
from wan.cfg_parallel import use_parallel_config  # noqa: E402
from wan.checkpoints import WanComponents  # noqa: E402
from wan.config import (  # noqa: E402
    HIGH,
    LOW,
    load_task_config,  # noqa: E402
)
from wan.distributed import (  # noqa: E402
    DistContext,
    _mesh,
    _shard,
    init_distributed,
    parallelize,
    session,
    validate,
)
from wan.frames import half_frame_count, latent_frame_count  # noqa: E402
from wan.guidance import guided_velocity  # noqa: E402
from wan.plan import StepPlan  # noqa: E402
from wan.text2video import WanT2V  # noqa: E402

logger = logging.getLogger("bench_multigpu")

KINDS: dict[str, tuple[str, bool, str]] = {
    "cfg_half": (HIGH, True, "half"),  # first: the cheapest, so it is also the warm-up
    "cfg_full": (LOW, True, "full"),
    "cond_full": (LOW, False, "full"),
}
"""Step kind -> (expert, CFG or cond-only, latent length)."""
WARMUP_COND = (HIGH, False, "half")
"""A cheap cond-only step, so the first timed cond-only step of a parallel mode pays no first-use costs."""
TINY_MULTI = dict(TINY_OVERRIDES, num_attention_heads=8)
"""bench_a14b's toy dims with 8 heads, so Ulysses over up to 8 CPU processes splits them."""
GUIDE_SCALE = 4.0
FULL_STEPS = 40


class MultiBench:
    """The experts, the inputs of every size, the report; every rank runs the same calls in the same order."""

    def __init__(self, args: argparse.Namespace, ctx: DistContext, started: float):
        self.args, self.ctx, self.started = args, ctx, started
        self.device = ctx.device
        self.dtype = getattr(torch, args.dtype)
        self.model_config = dict(A14B_CONFIG, **(TINY_MULTI if args.tiny else {}))
        self.model_config["num_layers"] = args.layers if args.layers is not None else (2 if args.tiny else 40)
        self.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
        self.task = dataclasses.replace(load_task_config("t2v-A14B"), sizes=tuple(self.sizes))
        self.reference: dict[tuple[str, str], torch.Tensor] = {}  # (size, kind) -> 1gpu velocity, on rank 0
        self.pipe: WanT2V | None = None
        self.report: dict[str, Any] = {
            "status": "running",
            "command": shlex.join(["torchrun", f"--nproc_per_node={ctx.world_size}", *sys.argv]),
            "world_size": ctx.world_size,
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU",
            "versions": {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.version.cuda},
            "setup": {
                "sizes": self.sizes,
                "frame_num": args.frame_num,
                "tokens": {size: self.tokens(size) for size in self.sizes},
                "dtype": args.dtype,
                "repeats": args.repeats,
                "model_config": self.model_config,
                "timing": "seconds of one velocity call (one step's DiT forwards, CFG and exchange), max over "
                "ranks, median of repeats after one warm-up step; ulysses mode = Ulysses over all ranks",
            },
            "modes": {},
            "projection_40_steps": {},
            "t5": {},
            "skipped": {},
        }

    # ------------------------------------------------------------------ inputs
    def tokens(self, size: str) -> dict[str, int]:
        width, height = self.task.parse_size(size)
        frames = latent_frame_count(self.args.frame_num, self.task.vae_stride[0])
        per_frame = (height // 16) * (width // 16)
        return {"full": frames * per_frame, "half": half_frame_count(frames) * per_frame}

    def latents(self, size: str) -> dict[str, torch.Tensor]:
        """Random latents of both lengths, the same on every rank (seeded on the CPU)."""
        width, height = self.task.parse_size(size)
        frames = latent_frame_count(self.args.frame_num, self.task.vae_stride[0])
        generator = torch.Generator().manual_seed(5)
        channels = self.model_config["in_channels"]
        full = torch.randn(1, channels, frames, height // 8, width // 8, generator=generator)
        half = full[:, :, : half_frame_count(frames)].contiguous()
        return {"full": full.to(self.device, self.dtype), "half": half.to(self.device, self.dtype)}

    # ------------------------------------------------------------------ model
    def build(self, fsdp: bool) -> None:
        """Fresh random experts (same seeds every build), CFG-parallel layout, FSDP if asked."""
        self.free()
        start = now(self.device)
        experts = {
            name: build_expert(self.model_config, self.device, self.dtype, seed, self.args.init_std)
            for seed, name in enumerate((HIGH, LOW))
        }
        components = WanComponents(
            tokenizer=None,
            text_encoder=None,
            vae=None,
            high_noise_model=experts[HIGH],
            low_noise_model=experts[LOW],
            layout="diffusers",
        )
        self.pipe = WanT2V(self.task, components, device=self.device)
        dim = self.model_config["text_dim"]
        self.cond = text_embeddings(self.args.prompt_rows, dim, self.device, self.dtype, 10)
        self.uncond = text_embeddings(self.args.prompt_rows, dim, self.device, self.dtype, 11)
        if self.ctx.world_size > 1:
            parallelize(self.pipe, self.ctx, ulysses_size=self.ctx.world_size // 2, cfg_parallel=True, dit_fsdp=fsdp)
        self.cfg_velocity = self.pipe.velocity
        self.report.setdefault("build_s", {})["fsdp" if fsdp else "replicated"] = now(self.device) - start

    def free(self) -> None:
        self.pipe = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def use_mode(self, mode: str) -> None:
        """Install the mode's velocity and, for the plain modes, their context-parallel config."""
        if mode.startswith("cfg_parallel"):
            self.pipe.velocity = self.cfg_velocity
            return
        self.pipe.velocity = guided_velocity
        config = None if mode == "1gpu" else self.cfg_velocity.world_config
        for expert in self.pipe.experts.values():
            use_parallel_config(expert, config)

    # ------------------------------------------------------------------ measuring
    def measure(self, mode: str, size: str) -> None:
        """One mode at one size on every rank (1gpu: rank 0 alone); records times, memory and differences."""
        alone = mode == "1gpu"
        active = not alone or self.ctx.rank == 0
        latents = self.latents(size)
        seconds: dict[str, list[float]] = {kind: [] for kind in KINDS}
        difference: dict[str, float | None] = {}
        reset_peak_memory(self.device)
        if active:
            self.use_mode(mode)
            self.step(mode, KINDS["cfg_half"], latents)  # warm-up
            if not alone:
                self.step(mode, WARMUP_COND, latents)
            for kind in KINDS:
                # one forward of 1gpu's cond-only step is half its CFG step: once, as the reference
                for _ in range(1 if alone and kind == "cond_full" else self.args.repeats):
                    elapsed, velocity = self.step(mode, KINDS[kind], latents)
                    seconds[kind].append(elapsed)
                difference[kind] = self.compare(mode, size, kind, velocity)
        peaks = self.gather(peak_memory_gb(self.device))
        per_rank = self.gather(seconds)
        if alone:
            per_rank = per_rank[:1]
        step_s = {
            kind: statistics.median([max(repeat) for repeat in zip(*(r[kind] for r in per_rank), strict=True)])
            for kind in KINDS
        }
        self.report["modes"].setdefault(mode, {})[size] = {
            "step_s": step_s,
            "step_s_per_rank": per_rank,
            "peak_memory_gb_per_rank": peaks[:1] if alone else peaks,
            "max_abs_diff_vs_1gpu": difference if self.ctx.rank == 0 else None,
        }
        self.project(mode, size, step_s)
        logger.info("%s %s: %s", mode, size, {k: round(v, 3) for k, v in step_s.items()})

    def step(
        self, mode: str, kind: tuple[str, bool, str], latents: dict[str, torch.Tensor]
    ) -> tuple[float, torch.Tensor]:
        """One velocity call of ``kind`` (expert, CFG, length), timed after a barrier (1gpu: none)."""
        expert_name, use_cfg, length = kind
        plan = StepPlan(0, 900.0 if expert_name == HIGH else 500.0, expert_name, GUIDE_SCALE, use_cfg)
        timestep = torch.full((1,), plan.timestep, device=self.device)
        if mode != "1gpu" and self.ctx.world_size > 1:
            dist.barrier()
        start = now(self.device)
        with torch.no_grad():
            velocity = self.pipe.velocity(
                self.pipe.experts[expert_name], latents[length], timestep, plan, self.cond, self.uncond
            )
        return now(self.device) - start, velocity

    def compare(self, mode: str, size: str, kind: str, velocity: torch.Tensor) -> float | None:
        """Largest |velocity - the 1gpu velocity| of this step (rank 0; None for 1gpu itself)."""
        if mode == "1gpu":
            self.reference[(size, kind)] = velocity.float().cpu()
            return None
        reference = self.reference.get((size, kind))
        return None if reference is None else float((velocity.float().cpu() - reference).abs().max())

    def project(self, mode: str, size: str, step_s: dict[str, float]) -> None:
        """40-step time from the per-step times: CFG on every step; half-frame on and off."""
        plan = step_plan(self.task, FULL_STEPS, {})
        high = sum(p.expert == HIGH for p in plan)
        self.report["projection_40_steps"].setdefault(mode, {})[size] = {
            "label": "projection from measured per-step times, not a measured run",
            "half_frame_off_s": FULL_STEPS * step_s["cfg_full"],
            "half_frame_on_s": high * step_s["cfg_half"] + (FULL_STEPS - high) * step_s["cfg_full"],
        }

    def gather(self, value: Any) -> list[Any]:
        if self.ctx.world_size == 1:
            return [value]
        values: list[Any] = [None] * self.ctx.world_size
        dist.all_gather_object(values, value)
        return values

    # ------------------------------------------------------------------ umT5
    def measure_t5(self) -> None:
        """One 2 x 512-token encode of an umT5-XXL-size random encoder: replicated, then sharded as --t5_fsdp does."""
        self.free()
        config = dict(UMT5_XXL, **(TINY_UMT5 if self.args.tiny else {}))
        generator = torch.Generator().manual_seed(3)
        ids = torch.randint(0, config["vocab_size"], (2, TEXT_TOKENS), generator=generator).to(self.device)
        mask = torch.zeros(2, TEXT_TOKENS, dtype=torch.long, device=self.device)
        mask[:, : self.args.prompt_rows] = 1
        for sharded in (False, True) if self.ctx.world_size > 1 else (False,):
            encoder = build_text_encoder(config, self.device, self.dtype, seed=0)
            if sharded:  # what --t5_fsdp does to the loaded encoder
                mesh = _mesh(self.ctx, (self.ctx.world_size,), ("fsdp",), own_group=True)
                _shard(encoder, encoder.encoder.block, mesh, reshard_root=True)
            reset_peak_memory(self.device)
            times = []
            with torch.no_grad():
                for _ in range(1 + self.args.repeats):
                    if self.ctx.world_size > 1:
                        dist.barrier()
                    start = now(self.device)
                    encoder(ids, mask)
                    times.append(now(self.device) - start)
            per_rank = self.gather(times[1:])
            self.report["t5"]["fsdp" if sharded else "replicated"] = {
                "encode_s": statistics.median(max(r[i] for r in per_rank) for i in range(self.args.repeats)),
                "peak_memory_gb_per_rank": self.gather(peak_memory_gb(self.device)),
                "params": sum(p.numel() for p in encoder.parameters()),
            }
            del encoder
            self.free()

    # ------------------------------------------------------------------ bookkeeping
    def over_budget(self, name: str) -> bool:
        """Rank 0 decides (the ranks' clocks differ slightly; all must skip together)."""
        decision = [time.perf_counter() - self.started > self.args.budget_s]
        if self.ctx.world_size > 1:
            dist.broadcast_object_list(decision, src=0)
        if decision[0]:
            self.report["skipped"][name] = f"over --budget_s {self.args.budget_s:g}"
            logger.warning("skipping %s: over --budget_s", name)
        return decision[0]

    def save(self) -> None:
        """Rank 0 writes the report atomically after every stage."""
        if self.ctx.rank != 0:
            return
        self.report["elapsed_s"] = time.perf_counter() - self.started
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(self.report, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, out)


MODES = ("1gpu", "ulysses", "cfg_parallel", "ulysses+fsdp", "cfg_parallel+fsdp")


def plan_modes(world_size: int, chosen: str) -> list[tuple[str, bool]]:
    """(mode, fsdp) in the order they run: replicated experts first, then the FSDP build."""
    names = [m.strip() for m in chosen.split(",") if m.strip()]
    unknown = sorted(set(names) - set(MODES))
    if unknown:
        raise SystemExit(f"error: unknown --modes {', '.join(unknown)}; choose from {', '.join(MODES)}")
    if world_size == 1:
        names = [m for m in names if m == "1gpu"]
    return [(mode, mode.endswith("+fsdp")) for mode in MODES if mode in names]


def run(args: argparse.Namespace, ctx: DistContext, started: float) -> dict[str, Any]:
    bench = MultiBench(args, ctx, started)
    if ctx.world_size > 1:
        heads = bench.model_config["num_attention_heads"]
        tokens = [t for size in bench.sizes for t in bench.tokens(size).values()]
        validate(ctx, ulysses_size=ctx.world_size, num_heads=heads, tokens=tokens)
        validate(ctx, ulysses_size=ctx.world_size // 2, cfg_parallel=True, num_heads=heads, tokens=tokens)
    distributed.FSDP_PREFETCH_BLOCKS = args.fsdp_prefetch
    bench.report["setup"]["fsdp_prefetch_blocks"] = args.fsdp_prefetch
    built = None
    for mode, fsdp in plan_modes(ctx.world_size, args.modes):
        if built != fsdp:
            bench.build(fsdp)
            built = fsdp
        for size in bench.sizes:
            if not bench.over_budget(f"{mode} {size}"):
                bench.measure(mode, size)
            bench.save()
    if not bench.over_budget("t5"):
        bench.measure_t5()
    bench.report["status"] = "done"
    bench.save()
    return bench.report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--sizes", default="832*480,1280*720", help="comma-separated W*H")
    p.add_argument("--frame_num", type=int, default=81)
    p.add_argument("--repeats", type=int, default=2, help="timed steps per kind after the warm-up")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from: {', '.join(MODES)}")
    p.add_argument("--fsdp_prefetch", type=int, default=1, help="blocks gathered ahead under FSDP (0: FSDP2's own)")
    p.add_argument("--out", default="bench_multigpu.json")
    p.add_argument("--layers", type=int, default=None, help="transformer blocks (default 40; 2 with --tiny)")
    p.add_argument("--tiny", action="store_true", help="toy dims for a CPU check")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--init_std", type=float, default=0.02)
    p.add_argument("--prompt_rows", type=int, default=120, help="non-zero rows of the random text embeddings")
    p.add_argument("--budget_s", type=float, default=450.0, help="skip the stages that start after this many s")
    p.add_argument("--dist_timeout_s", type=float, default=900.0, help="collectives' timeout (1gpu: others wait)")
    return p


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    ctx = init_distributed(args.device, timeout_s=args.dist_timeout_s)
    if ctx.rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    with session(ctx):
        report = run(args, ctx, started)
    if ctx.rank == 0:
        logger.info("wrote %s (%s, %.0f s)", args.out, report["status"], report["elapsed_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
