"""Multi-GPU step costs under torchrun: one velocity call per step kind, per mode, per size, max over ranks.

``MultiBench`` builds random A14B-size experts and random text embeddings on every rank and
installs each mode through the engine's own ``wan.distributed.parallelize`` and ``WanT2V.velocity``;
every rank runs the same calls in the same order, rank 0 writes the report after every stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import platform
import shlex
import statistics
import sys
import time
from typing import Any

import torch
import torch.distributed as dist

from benchmarks.measure import now, peak_memory_gb, reset_peak_memory
from benchmarks.plan import released_steps, sequence_lengths, step_plan
from benchmarks.weights import (
    TEXT_TOKENS,
    TINY_OVERRIDES,
    TINY_UMT5,
    UMT5_XXL,
    build_expert,
    build_text_encoder,
    expert_config,
    text_embeddings,
)
from wan import distributed
from wan.cfg_parallel import use_parallel_config
from wan.checkpoints import WanComponents
from wan.config import HIGH, LOW, load_task_config
from wan.distributed import DistContext, _mesh, _shard, parallelize, validate
from wan.frames import half_frame_count, latent_frame_count
from wan.guidance import guided_velocity
from wan.plan import StepPlan
from wan.text2video import WanT2V
from wan.video import save_json

logger = logging.getLogger("benchmarks")

KINDS: dict[str, tuple[str, bool, str]] = {
    "cfg_half": (HIGH, True, "half"),  # first: the cheapest, so it is also the warm-up
    "cfg_full": (LOW, True, "full"),
    "cond_full": (LOW, False, "full"),
}
"""Step kind -> (expert, CFG or cond-only, latent length)."""
WARMUP_COND = (HIGH, False, "half")
"""A cheap cond-only step, so the first timed cond-only step of a parallel mode pays no first-use costs."""
TINY_MULTI = dict(TINY_OVERRIDES, num_attention_heads=8)
"""The benchmarks' toy dims with 8 heads, so Ulysses over up to 8 CPU processes splits them."""
GUIDE_SCALE = 4.0


class MultiBench:
    """The experts, the inputs of every size, the report; every rank runs the same calls in the same order."""

    def __init__(self, args: argparse.Namespace, ctx: DistContext, started: float):
        self.args, self.ctx, self.started = args, ctx, started
        self.device = ctx.device
        self.dtype = getattr(torch, args.dtype)
        self.model_config = expert_config(args.tiny, args.layers, TINY_MULTI)
        self.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
        self.task = dataclasses.replace(
            load_task_config("t2v-A14B"), sizes=tuple(self.sizes), default_size=self.sizes[0], frame_num=args.frame_num
        )
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
        return sequence_lengths(self.task, size, self.args.frame_num)

    def latents(self, size: str) -> dict[str, torch.Tensor]:
        """Random latents of both lengths, the same on every rank (seeded on the CPU)."""
        width, height = self.task.parse_size(size)
        frames = latent_frame_count(self.args.frame_num, self.task.vae_stride[0])
        generator = torch.Generator().manual_seed(5)
        channels = self.model_config["in_channels"]
        _, stride_h, stride_w = self.task.vae_stride
        full = torch.randn(1, channels, frames, height // stride_h, width // stride_w, generator=generator)
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
        full = released_steps(self.task)
        plan = step_plan(self.task, full, {})
        high = sum(p.expert == HIGH for p in plan)
        self.report["projection_40_steps"].setdefault(mode, {})[size] = {
            "label": "projection from measured per-step times, not a measured run",
            "half_frame_off_s": full * step_s["cfg_full"],
            "half_frame_on_s": high * step_s["cfg_half"] + (full - high) * step_s["cfg_full"],
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
        save_json(self.report, self.args.out)


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
