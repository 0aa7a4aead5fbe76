"""Speed of the Wan2.2-T2V-A14B sampling loop at full size with random weights: ours vs diffusers' WanPipeline.

Time does not depend on weight values, so two experts with the A14B config are built directly on the
device with random weights (bf16, fp32 where ``from_pretrained(torch_dtype=bfloat16)`` keeps fp32); no
text encoder and no VAE (random text embeddings instead). In one run it measures:

- the bf16 matmul peak (8192^3, median), the reference for MFU;
- per-forward time of each expert at the full and the half-frame token count;
- the real loop at a reduced step count (``--steps``; plan, router and completion logic are those of a
  40-step run): diffusers' ``WanPipeline`` and our ``WanT2V.sample`` in its modes, each once after a
  warm-up run, with seconds per step by expert, DiT forwards counted by hooks, and peak memory;
- the 40-step time of each mode projected from the per-forward times and the real 40-step plan.

A GPU run writes the JSON after every stage, so a run cut short still leaves what it measured, and
skips the optional cuDNN modes when ``--budget_s`` would be exceeded.

    python scripts/bench_a14b.py --out results.json                       # H100, ~6 min
    python scripts/bench_a14b.py --tiny --device cpu --dtype float32 --size 64*64 --frame_num 9 --out t.json
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import math
import os
import platform
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import diffusers  # noqa: E402
from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel  # noqa: E402

from wan.checkpoints import WanComponents  # noqa: E402
from wan.config import TaskConfig, load_task_config  # noqa: E402
from wan.frames import half_frame_count, latent_frame_count  # noqa: E402
from wan.guidance import HIGH, LOW, StepPlan, plan_steps, route  # noqa: E402
from wan.half_frame import PLAIN_STEPS, Window, default_steps, in_window  # noqa: E402
from wan.solvers import make_scheduler  # noqa: E402
from wan.text2video import GenerationSettings, WanT2V  # noqa: E402

logger = logging.getLogger("bench_a14b")

A14B_CONFIG: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 40,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 13824,
    "num_layers": 40,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
}
TINY_OVERRIDES: dict[str, Any] = {
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 48,
}
TEXT_TOKENS = 512
FULL_STEPS = 40
FULL_TRUNCATE_STEPS = 5  # --cfg_truncate_steps of the truncation modes at 40 steps
FULL_TRUNCATE_HIGH_STEPS = 3  # --cfg_truncate_high_noise_steps at 40 steps
GUIDE_HIGH, GUIDE_LOW = 4.0, 3.0
NATIVE, CUDNN = "native", "_native_cudnn"
OUR_MODES = ("baseline", "half_frame", "half_frame_default", "cfg_truncate", "half_frame+cfg_truncate")
"""``half_frame`` is the plain window (every high-noise step at half frames, renoise completion);
``half_frame_default`` is what ``--enable_half_frame_generation`` alone runs (wan.half_frame)."""
ALL_MODES = ("diffusers", *OUR_MODES, "cudnn")
FLOPS_FORMULA = (
    "per forward = layers * (8 L D^2 + 4 L^2 D + 4 L D^2 + 4 Lt D^2 + 4 L Lt D + 4 L D F): self-attn q/k/v/o "
    "projections, self-attn QK^T and PV, cross-attn q/o projections, cross-attn k/v projections of the Lt text "
    "tokens, cross-attn QK^T and PV, FFN; L video tokens, Lt = 512 text tokens, D = heads * head_dim, F = ffn_dim, "
    "one multiply-add = 2 FLOPs; patch/text/time embeddings, norms, modulation and the head are left out (<1%)"
)


# ----------------------------------------------------------------------------------- model
@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_expert(config: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int, std: float):
    """A random expert made on ``device`` in ``dtype`` (no CPU copy: 2 x 28.6 GB must fit next to activations).

    Weight matrices are drawn N(0, std); ``_keep_in_fp32_modules`` parameters become fp32, by the rule
    ``from_pretrained(torch_dtype=...)`` uses, so kernels and casts are those of a loaded checkpoint.
    """
    torch.manual_seed(seed)
    with torch.device(device), default_dtype(dtype):
        model = WanTransformer3DModel(**config)
    keep = model._keep_in_fp32_modules or []
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2 and not name.endswith("scale_shift_table"):
                param.normal_(0.0, std)
            if any(part in keep for part in name.split(".")):
                param.data = param.data.float()
    return model.eval().requires_grad_(False)


def forward_flops(config: dict[str, Any], tokens: int, text_tokens: int = TEXT_TOKENS) -> float:
    """Analytic FLOPs of one expert forward (see ``FLOPS_FORMULA``)."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    f, n, length = config["ffn_dim"], config["num_layers"], tokens
    per_layer = (
        8 * length * d * d
        + 4 * length * length * d
        + 4 * length * d * d
        + 4 * text_tokens * d * d
        + 4 * length * text_tokens * d
        + 4 * length * d * f
    )
    return float(n * per_layer)


def text_embeddings(rows: int, dim: int, device: torch.device, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """[1, 512, dim] like umT5's output: ``rows`` random rows, zeros past the prompt's length."""
    generator = torch.Generator().manual_seed(seed)
    embeds = torch.zeros(1, TEXT_TOKENS, dim)
    embeds[:, :rows] = torch.randn(1, rows, dim, generator=generator)
    return embeds.to(device, dtype)


# ----------------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    synchronize(device)
    return time.perf_counter()


def peak_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def matmul_peak(n: int, device: torch.device, dtype: torch.dtype, repeats: int = 10) -> dict[str, Any]:
    """Achievable matmul throughput here: median of ``repeats`` n^3 matmuls on random data after warm-up."""
    generator = torch.Generator(device=device).manual_seed(1)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    for _ in range(3):
        a @ b
    seconds = []
    for _ in range(repeats):
        start = now(device)
        a @ b
        seconds.append(now(device) - start)
    median = statistics.median(seconds)
    return {"n": n, "dtype": str(dtype), "median_s": median, "tflops": 2 * n**3 / median / 1e12, "all_s": seconds}


class ForwardCounter:
    """Counts DiT forwards and their token counts per expert with pre-hooks, independently of either loop."""

    def __init__(self, experts: dict[str, torch.nn.Module], patch: tuple[int, int, int]):
        self.tokens: dict[str, list[int]] = {name: [] for name in experts}
        self.patch_volume = math.prod(patch)
        for name, expert in experts.items():
            expert.register_forward_pre_hook(self._hook(name), with_kwargs=True)

    def _hook(self, name: str) -> Callable:
        def record(_module, args, kwargs):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            self.tokens[name].append(math.prod(hidden.shape[2:]) // self.patch_volume)

        return record

    def reset(self) -> None:
        for calls in self.tokens.values():
            calls.clear()

    def summary(self, config: dict[str, Any]) -> dict[str, Any]:
        return {
            "forwards": {name: len(calls) for name, calls in self.tokens.items()},
            "tokens": {name: sum(calls) for name, calls in self.tokens.items()},
            "flops": sum(forward_flops(config, t) for calls in self.tokens.values() for t in calls),
        }


# ----------------------------------------------------------------------------------- plans
def truncation(steps: int) -> tuple[int, int]:
    """The 40-step truncation (5 last steps, 3 last high-noise steps) scaled to ``steps``, at least 1 each."""
    return (
        max(1, round(FULL_TRUNCATE_STEPS * steps / FULL_STEPS)),
        max(1, round(FULL_TRUNCATE_HIGH_STEPS * steps / FULL_STEPS)),
    )


def mode_settings(mode: str, steps: int) -> dict[str, Any]:
    """GenerationSettings fields of one of our modes at ``steps`` sampling steps."""
    fields: dict[str, Any] = {}
    if mode == "half_frame_default":
        fields.update(half_frame=True)
    elif "half_frame" in mode:
        fields.update(half_frame=True, half_frame_steps=PLAIN_STEPS, frame_completion="renoise")
    if "cfg_truncate" in mode:
        trunc, trunc_high = truncation(steps)
        fields.update(cfg_truncate_steps=trunc, cfg_truncate_high_noise_steps=trunc_high)
    return fields


def step_plan(config: TaskConfig, steps: int, fields: dict[str, Any]) -> list[StepPlan]:
    """The plan ``WanT2V.sample`` follows: UniPC shift-12 timesteps, boundary router, truncation."""
    scheduler = make_scheduler(config.sample_solver, config.sample_shift, config.num_train_timesteps)
    scheduler.set_timesteps(steps)
    return plan_steps(
        scheduler.timesteps.tolist(),
        boundary=config.boundary,
        guide_scale_high=GUIDE_HIGH,
        guide_scale_low=GUIDE_LOW,
        num_train_timesteps=config.num_train_timesteps,
        cfg_truncate_steps=fields.get("cfg_truncate_steps", 0),
        cfg_truncate_high_noise_steps=fields.get("cfg_truncate_high_noise_steps", 0),
    )


def forward_seconds(plan: list[StepPlan], per_forward: dict[str, dict[str, dict]], fields: dict[str, Any]) -> float:
    """Time of a plan's forwards alone, from the measured per-forward medians."""
    half = half_steps(plan, fields)
    return sum(
        p.forwards * per_forward[p.expert]["half" if h else "full"]["median_s"] for p, h in zip(plan, half, strict=True)
    )


def half_steps(plan: list[StepPlan], fields: dict[str, Any]) -> list[bool]:
    """Which steps of ``plan`` run at half frames under the mode's ``fields`` (its resolved window)."""
    if not fields.get("half_frame"):
        return [False] * len(plan)
    window = fields.get("half_frame_steps") or default_steps(len(plan))
    return in_window(Window.parse(window), [p.expert for p in plan])


def plan_summary(plan: list[StepPlan]) -> dict[str, int]:
    return {
        "high_noise_steps": sum(p.expert == HIGH for p in plan),
        "low_noise_steps": sum(p.expert == LOW for p in plan),
        "forwards": sum(p.forwards for p in plan),
        "cond_only_steps": sum(not p.use_cfg for p in plan),
    }


# ----------------------------------------------------------------------------------- the benchmark
class Bench:
    """One benchmark run: the experts, the pipelines, the JSON report and the time budget."""

    def __init__(self, args: argparse.Namespace, started: float):
        self.args = args
        self.started = started
        self.device = torch.device(args.device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = getattr(torch, args.dtype)
        self.model_config = dict(A14B_CONFIG, **(TINY_OVERRIDES if args.tiny else {}))
        self.model_config["num_layers"] = args.layers if args.layers is not None else (2 if args.tiny else 40)
        base = load_task_config("t2v-A14B")
        self.task = dataclasses.replace(base, sizes=(args.size,), default_size=args.size, frame_num=args.frame_num)
        width, height = self.task.parse_size(args.size)
        stride_t, stride_h, stride_w = self.task.vae_stride
        self.full_frames = latent_frame_count(args.frame_num, stride_t)
        self.latent_hw = (height // stride_h, width // stride_w)
        per_frame = (self.latent_hw[0] // 2) * (self.latent_hw[1] // 2)
        self.tokens = {"full": self.full_frames * per_frame, "half": half_frame_count(self.full_frames) * per_frame}
        self.per_forward: dict[str, dict[str, dict[str, dict]]] = {}
        self.report: dict[str, Any] = {
            "status": "running",
            "command": shlex.join([sys.executable, *sys.argv]),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            },
            "device": (
                torch.cuda.get_device_name(self.device)
                if self.device.type == "cuda"
                else f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
            ),
            "setup": {
                "size": args.size,
                "frame_num": args.frame_num,
                "latent_frames": {"full": self.full_frames, "half": half_frame_count(self.full_frames)},
                "tokens": self.tokens,
                "text_tokens": TEXT_TOKENS,
                "prompt_rows": args.prompt_rows,
                "steps": args.steps,
                "warmup_steps": args.warmup_steps,
                "dtype": args.dtype,
                "tiny": args.tiny,
                "model_config": self.model_config,
                "init_std": args.init_std,
                "guide_scales": [GUIDE_HIGH, GUIDE_LOW],
                "truncation_at_steps": truncation(args.steps),
                "truncation_at_40": [FULL_TRUNCATE_STEPS, FULL_TRUNCATE_HIGH_STEPS],
            },
            "flops_formula": FLOPS_FORMULA,
            "flops_per_forward": {k: forward_flops(self.model_config, v) for k, v in self.tokens.items()},
            "modes": {},
            "skipped": {},
            "errors": {},
        }

    # ------------------------------------------------------------------ bookkeeping
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def fits(self, name: str, estimate_s: float) -> bool:
        """Whether ``name`` (estimated ``estimate_s``) fits in the budget; records the skip otherwise."""
        if self.elapsed() + estimate_s <= self.args.budget_s:
            return True
        reason = f"over budget: {self.elapsed():.0f} s spent + ~{estimate_s:.0f} s > --budget_s {self.args.budget_s}"
        logger.warning("skipping %s (%s)", name, reason)
        self.report["skipped"][name] = reason
        return False

    def save(self) -> None:
        """Write the report atomically, so a run cut short leaves valid JSON."""
        self.report["elapsed_s"] = self.elapsed()
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(self.report, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, out)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Log the stage; an exception is recorded and the next stage runs (one GPU shot must not lose it all)."""
        logger.info("[%6.1f s] %s", self.elapsed(), name)
        failed = False
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - the benchmark reports a failed stage and goes on
            logger.error("%s failed: %s", name, exc)
            self.report["errors"][name] = traceback.format_exc(limit=4)
            failed = True
        if failed:  # outside the handler, so the failed stage's frames and tensors can be freed
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        self.save()

    # ------------------------------------------------------------------ stages
    def build(self) -> None:
        start = now(self.device)
        self.experts = {
            HIGH: build_expert(self.model_config, self.device, self.dtype, 0, self.args.init_std),
            LOW: build_expert(self.model_config, self.device, self.dtype, 1, self.args.init_std),
        }
        self.counter = ForwardCounter(self.experts, tuple(self.model_config["patch_size"]))
        dim = self.model_config["text_dim"]
        self.cond = text_embeddings(self.args.prompt_rows, dim, self.device, self.dtype, 10)
        self.uncond = text_embeddings(self.args.prompt_rows, dim, self.device, self.dtype, 11)
        components = WanComponents(
            tokenizer=None,
            text_encoder=None,
            vae=None,
            high_noise_model=self.experts[HIGH],
            low_noise_model=self.experts[LOW],
            layout="diffusers",
        )
        self.pipe = WanT2V(self.task, components, device=self.device)
        params = sum(p.numel() for p in self.experts[HIGH].parameters())
        self.report["build"] = {
            "seconds": now(self.device) - start,
            "params_per_expert": params,
            "memory_gb_after_build": peak_memory_gb(self.device),
        }
        logger.info("built 2 experts of %.2fB parameters each in %.1f s", params / 1e9, self.report["build"]["seconds"])

    def measure_matmul(self) -> None:
        n = self.args.matmul_n or (256 if self.args.tiny else 8192)
        self.report["matmul_peak"] = matmul_peak(n, self.device, self.dtype)
        logger.info("matmul peak %.1f TFLOP/s", self.report["matmul_peak"]["tflops"])

    def measure_forwards(self, backend: str) -> None:
        """Median seconds of one forward per expert at the full and the half-frame token count."""
        self.pipe.set_attention_backend(backend)
        results: dict[str, dict[str, dict]] = {HIGH: {}, LOW: {}}
        t = torch.full((1,), 900.0, device=self.device)
        for length, frames in (("full", self.full_frames), ("half", half_frame_count(self.full_frames))):
            channels = self.model_config["in_channels"]
            hidden = torch.randn(1, channels, frames, *self.latent_hw, device=self.device, dtype=self.dtype)
            with torch.no_grad():
                warm = self.experts[HIGH](
                    hidden_states=hidden, timestep=t, encoder_hidden_states=self.cond, return_dict=False
                )[0]
                self.report.setdefault("finite_forward", {})[f"{backend}/{length}"] = {
                    "finite": bool(torch.isfinite(warm).all()),
                    "output_std": float(warm.float().std()),
                }
                for name, expert in self.experts.items():
                    seconds = []
                    for _ in range(self.args.repeats):
                        start = now(self.device)
                        expert(hidden_states=hidden, timestep=t, encoder_hidden_states=self.cond, return_dict=False)
                        seconds.append(now(self.device) - start)
                    median = statistics.median(seconds)
                    flops = forward_flops(self.model_config, self.tokens[length])
                    results[name][length] = {
                        "tokens": self.tokens[length],
                        "median_s": median,
                        "all_s": seconds,
                        "tflops": flops / median / 1e12,
                        "mfu": self._mfu(flops, median),
                    }
                    logger.info("  %s %s (%d tokens): %.3f s/forward", name, length, self.tokens[length], median)
        self.counter.reset()
        self.per_forward[backend] = results
        self.report.setdefault("per_forward", {})[backend] = results

    def run_ours(self, mode: str, backend: str, steps: int) -> dict[str, Any]:
        """Our loop (``WanT2V.sample``) in ``mode``; seconds per step by expert from a per-step callback."""
        self.pipe.set_attention_backend(backend)
        fields = mode_settings(mode, steps)
        settings = GenerationSettings(prompt="benchmark", seed=self.args.seed, sample_steps=steps, **fields)
        marks: list[tuple[str, float]] = []
        last = [0.0]

        def on_step(plan: StepPlan, _latents: torch.Tensor) -> None:
            t = now(self.device)
            marks.append((plan.expert, t - last[0]))
            last[0] = t

        self.counter.reset()
        reset_peak_memory(self.device)
        last[0] = start = now(self.device)
        result = self.pipe.sample(settings, self.cond, self.uncond, progress=False, on_step=on_step)
        seconds = now(self.device) - start
        finite = bool(torch.isfinite(result.latents).all())
        return self._summarise(mode, "ours", backend, seconds, marks, steps, finite)

    def run_diffusers(self, steps: int) -> dict[str, Any]:
        """diffusers' WanPipeline on the same experts and embeddings (same attention backend: native)."""
        self.pipe.set_attention_backend(NATIVE)
        width, height = self.task.parse_size(self.args.size)
        pipeline = WanPipeline(
            tokenizer=None,
            text_encoder=None,
            vae=None,
            scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=12.0),
            transformer=self.experts[HIGH],
            transformer_2=self.experts[LOW],
            boundary_ratio=self.task.boundary,
        )
        pipeline.set_progress_bar_config(disable=True)
        marks: list[tuple[str, float]] = []
        last = [0.0]

        def on_step_end(_pipe, _index: int, timestep: torch.Tensor, _kwargs: dict) -> dict:
            t = now(self.device)
            marks.append((route(float(timestep), self.task.boundary, self.task.num_train_timesteps), t - last[0]))
            last[0] = t
            return {}

        self.counter.reset()
        reset_peak_memory(self.device)
        last[0] = start = now(self.device)
        latents = pipeline(
            prompt_embeds=self.cond,
            negative_prompt_embeds=self.uncond,
            height=height,
            width=width,
            num_frames=self.args.frame_num,
            num_inference_steps=steps,
            guidance_scale=GUIDE_HIGH,
            guidance_scale_2=GUIDE_LOW,
            generator=torch.Generator().manual_seed(self.args.seed),
            output_type="latent",
            return_dict=False,
            callback_on_step_end=on_step_end,
        )[0]
        seconds = now(self.device) - start
        finite = bool(torch.isfinite(latents).all())
        del pipeline, latents  # the pipeline holds references to the experts and its scheduler state
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return self._summarise("diffusers", "diffusers", NATIVE, seconds, marks, steps, finite)

    def _summarise(
        self,
        mode: str,
        kind: str,
        backend: str,
        seconds: float,
        marks: list[tuple[str, float]],
        steps: int,
        finite: bool,
    ) -> dict[str, Any]:
        """One run's record; ``plan`` is what the step plan says, ``forwards`` what the hooks counted."""
        fields = mode_settings(mode, steps)
        counted = self.counter.summary(self.model_config)
        per_step = {
            expert: statistics.mean([s for e, s in marks if e == expert])
            if any(e == expert for e, _ in marks)
            else None
            for expert in (HIGH, LOW)
        }
        return {
            "mode": mode,
            "kind": kind,
            "backend": backend,
            "settings": fields,
            "seconds": seconds,
            "steps": {HIGH: sum(e == HIGH for e, _ in marks), LOW: sum(e == LOW for e, _ in marks)},
            "seconds_per_step": per_step,
            "step_seconds": [[e, s] for e, s in marks],
            "forwards": counted["forwards"],
            "tokens": counted["tokens"],
            "plan": plan_summary(step_plan(self.task, steps, fields)),
            "tflops": counted["flops"] / seconds / 1e12,
            "mfu": self._mfu(counted["flops"], seconds),
            "peak_memory_gb": peak_memory_gb(self.device),
            "latents_finite": finite,
        }

    def _mfu(self, flops: float, seconds: float) -> float | None:
        peak = self.report.get("matmul_peak", {}).get("tflops")
        return flops / seconds / 1e12 / peak if peak else None

    def estimate(self, fields: dict[str, Any], steps: int, backend: str = NATIVE) -> float:
        """Seconds a loop run should take, from per-forward times (plus 10% for everything else)."""
        per_forward = self.per_forward.get(backend) or self.per_forward.get(NATIVE)
        if per_forward is None:
            return 0.0
        return 1.1 * forward_seconds(step_plan(self.task, steps, fields), per_forward, fields)

    def record(self, name: str, result: dict[str, Any]) -> None:
        self.report["modes"][name] = result
        logger.info(
            "  %s: %.2f s for %d steps, forwards %s, peak %s GB",
            name,
            result["seconds"],
            sum(result["steps"].values()),
            result["forwards"],
            None if result["peak_memory_gb"] is None else round(result["peak_memory_gb"], 1),
        )

    def finish(self) -> None:
        """Ratios and 40-step projections of every measured mode."""
        modes = self.report["modes"]
        base = modes.get("baseline", {}).get("seconds")
        diff = modes.get("diffusers", {}).get("seconds")
        for result in modes.values():
            per_forward = self.per_forward.get(result["backend"])
            result["speedup_vs_baseline"] = base / result["seconds"] if base else None
            result["speedup_vs_diffusers"] = diff / result["seconds"] if diff else None
            if per_forward is None:
                continue
            reduced = forward_seconds(
                step_plan(self.task, self.args.steps, result["settings"]), per_forward, result["settings"]
            )
            fields40 = mode_settings(result["mode"], FULL_STEPS)
            plan40 = step_plan(self.task, FULL_STEPS, fields40)
            projected = forward_seconds(plan40, per_forward, fields40)
            result["projection_40_steps"] = {
                "label": "projection: 40-step plan x measured per-forward medians, not a measured run",
                **plan_summary(plan40),
                "seconds_forwards_only": projected,
                "seconds_with_measured_loop_overhead": projected * result["seconds"] / reduced,
            }
        for key in ("baseline", "diffusers"):
            ref = modes.get(key, {}).get("projection_40_steps", {}).get("seconds_with_measured_loop_overhead")
            for result in modes.values():
                projection = result.get("projection_40_steps")
                if projection is not None:
                    value = projection["seconds_with_measured_loop_overhead"]
                    projection[f"speedup_vs_{key}"] = ref / value if ref else None
        self.report["peak_memory_gb"] = peak_memory_gb(self.device)
        self.report["status"] = "done"


def run(args: argparse.Namespace, started: float) -> dict[str, Any]:
    bench = Bench(args, started)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(ALL_MODES))
    if unknown:
        raise SystemExit(f"error: unknown --modes {', '.join(unknown)}; choose from {', '.join(ALL_MODES)}")
    with bench.stage("build the experts"):
        bench.build()
    if bench.report["errors"]:
        return bench.report
    with bench.stage("matmul peak"):
        bench.measure_matmul()
    with bench.stage("per-forward times (native)"):
        bench.measure_forwards(NATIVE)
    with bench.stage(f"warm-up run ({args.warmup_steps} steps)"):
        bench.run_ours("baseline", NATIVE, args.warmup_steps)

    steps = args.steps
    for mode in ("baseline", "diffusers", *OUR_MODES[1:]):
        if mode not in modes or not bench.fits(mode, bench.estimate(mode_settings(mode, steps), steps)):
            continue
        with bench.stage(f"{mode} ({steps} steps)"):
            result = bench.run_diffusers(steps) if mode == "diffusers" else bench.run_ours(mode, NATIVE, steps)
            bench.record(mode, result)

    if "cudnn" in modes:
        run_cudnn(bench, steps)
    bench.finish()
    bench.save()
    return bench.report


def run_cudnn(bench: Bench, steps: int) -> None:
    """Our baseline and our fastest mode again with diffusers' cuDNN SDPA backend, if the budget allows."""
    if bench.device.type != "cuda":
        bench.report["skipped"]["cudnn"] = "the _native_cudnn attention backend needs CUDA"
        return
    native = {m: r["seconds"] for m, r in bench.report["modes"].items() if r["kind"] == "ours"}
    fastest = min(native, key=native.get) if native else "baseline"
    full_forward = bench.per_forward.get(NATIVE, {}).get(HIGH, {}).get("full", {}).get("median_s", 0.0)
    if not bench.fits("cudnn per-forward", full_forward * (2 + 4 * bench.args.repeats)):
        return
    with bench.stage("per-forward times (_native_cudnn)"):
        bench.measure_forwards(CUDNN)
    if CUDNN not in bench.per_forward:
        return
    for mode in dict.fromkeys(("baseline", fastest)):
        name = f"{mode}@cudnn"
        if not bench.fits(name, bench.estimate(mode_settings(mode, steps), steps, CUDNN)):
            continue
        with bench.stage(f"{name} ({steps} steps)"):
            bench.record(name, bench.run_ours(mode, CUDNN, steps))
    bench.pipe.set_attention_backend(NATIVE)


def print_table(report: dict[str, Any]) -> None:
    """The summary a person reads last: measured reduced-step runs, then the labelled 40-step projections."""

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    steps = report["setup"]["steps"]
    setup, peak = report["setup"], report.get("matmul_peak", {}).get("tflops")
    print(
        f"\n{report['device']}  size {setup['size']}  frames {setup['frame_num']}  tokens {setup['tokens']}  "
        f"matmul peak {fmt(peak, '.0f')} TFLOP/s"
    )
    header = (
        f"{'mode':<28}{f's ({steps} st)':>11}{'s/st hi':>9}{'s/st lo':>9}{'fwd':>5}{'x base':>8}{'x diff':>8}"
        f"{'proj40 s':>10}{'x base':>8}{'x diff':>8}{'peak GB':>9}{'MFU':>6}"
    )
    print(header)
    print("-" * len(header))
    for name, r in report["modes"].items():
        proj = r.get("projection_40_steps", {})
        print(
            f"{name:<28}{r['seconds']:>11.1f}{fmt(r['seconds_per_step'][HIGH], '.2f'):>9}"
            f"{fmt(r['seconds_per_step'][LOW], '.2f'):>9}{sum(r['forwards'].values()):>5}"
            f"{fmt(r.get('speedup_vs_baseline'), '.2f'):>8}{fmt(r.get('speedup_vs_diffusers'), '.2f'):>8}"
            f"{fmt(proj.get('seconds_with_measured_loop_overhead'), '.0f'):>10}"
            f"{fmt(proj.get('speedup_vs_baseline'), '.2f'):>8}{fmt(proj.get('speedup_vs_diffusers'), '.2f'):>8}"
            f"{fmt(r['peak_memory_gb'], '.1f'):>9}{fmt(r['mfu'], '.2f'):>6}"
        )
    print("x base / x diff: speed-up (>1 is faster); proj40: PROJECTION of the 40-step run (26 high + 14 low steps)")
    for name, reason in report["skipped"].items():
        print(f"skipped {name}: {reason}")
    for name in report["errors"]:
        print(f"FAILED {name} (traceback in the JSON)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--size", default="832*480", help="W*H")
    p.add_argument("--frame_num", type=int, default=81)
    p.add_argument("--steps", type=int, default=8, help="sampling steps of the measured loop runs")
    p.add_argument("--warmup_steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="timed forwards per expert and token count")
    p.add_argument("--modes", default=",".join(ALL_MODES), help=f"comma-separated, from: {', '.join(ALL_MODES)}")
    p.add_argument("--out", default="bench_a14b.json")
    p.add_argument("--layers", type=int, default=None, help="transformer blocks (default 40; 2 with --tiny)")
    p.add_argument("--tiny", action="store_true", help="toy dims (2 heads x 12, ffn 48) for a CPU check")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--init_std", type=float, default=0.02, help="std of the random weight matrices")
    p.add_argument("--prompt_rows", type=int, default=120, help="non-zero rows of the random text embeddings")
    p.add_argument("--matmul_n", type=int, default=None, help="matmul size for the peak (default 8192; 256 tiny)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget_s", type=float, default=390.0, help="skip optional stages past this many seconds")
    return p


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    report = run(args, started)
    print_table(report)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
