"""End-to-end speed of Wan2.2-T2V-A14B at full size with random weights: our modes vs diffusers' WanPipeline.

Time does not depend on weight values, so every part is built with random weights at its real size:
two A14B experts (bf16, fp32 where ``from_pretrained(torch_dtype=bfloat16)`` keeps fp32), a umT5-XXL
text encoder (bf16) and the Wan2.1 VAE (float32, as diffusers' docs load it). In one process it runs
diffusers' ``WanPipeline`` (the peer, resident) and our ``WanT2V.generate`` in each mode (placement,
levers, presets, all through the engine's own modules), end to end: text encoding + sampling + VAE
decode. Each mode gets a warm-up run (compilation happens there) and then one timed run; every
ratio is to the peer measured in the same process. Per mode it records seconds per stage, seconds
per step by expert, DiT forwards counted by hooks, peak GPU memory and setup seconds (placement,
quantisation, compilation) apart from generation.

The released schedule is 40 steps (26 high-noise + 14 low-noise); a measured run uses ``--steps``
(the plan and the router are those of the real schedule at that count), and the JSON adds a labelled
PROJECTION of the 40-step end-to-end time: measured text encoding and decode, plus each expert's
measured stage extended by the real 40-step plan's extra forwards at that expert's steady-state
seconds per forward (its first step, which carries one-time costs such as a model move, is left out
of the rate).

``--loop_probe N`` times a forward of the high-noise expert out of the loop after each resident mode
without a cache, on the loop's own last inputs and on random ones, to tell the loop's overhead from
the inputs' effect on the GPU's clock (``loop_probe`` in the JSON).

The JSON is written after every mode, so a run cut short still leaves what it measured; modes past
``--budget_s`` are skipped with the reason.

    PYTHONUNBUFFERED=1 python3 scripts/bench_a14b.py --size '832*480' --steps 6 --out bench_480p.json
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel  # noqa: E402
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel  # noqa: E402

from wan.checkpoints import WanComponents  # noqa: E402
from wan.config import HIGH, LOW, TaskConfig, load_task_config  # noqa: E402  # noqa: E402
from wan.errors import ConfigError  # noqa: E402
from wan.frames import latent_frame_count  # noqa: E402
from wan.levers import Levers, apply_levers, parse_levers  # noqa: E402
from wan.levers.attention import FLASH_4, SAGE  # noqa: E402
from wan.levers.cache import counting_computed  # noqa: E402
from wan.levers.compile import compile_seconds, reset_compiled  # noqa: E402
from wan.levers.presets import preset_generation_defaults, resolve_levers  # noqa: E402
from wan.placement import Placement, apply_placement, choose_placement  # noqa: E402
from wan.plan import StepPlan, plan_steps, route  # noqa: E402
from wan.settings import GenerationSettings  # noqa: E402
from wan.solvers import make_scheduler  # noqa: E402
from wan.text2video import GenerationResult, WanT2V  # noqa: E402

logger = logging.getLogger("bench_a14b")

REPO = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = REPO / "models" / "t2v-tiny" / "tokenizer"  # umT5's tokenizer subset: its ids are valid in 256384
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
UMT5_XXL: dict[str, Any] = {  # google/umt5-xxl's encoder, as Wan2.2 uses it
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "vocab_size": 256384,
    "feed_forward_proj": "gated-gelu",  # transformers derives dense_act_fn="gelu_new", is_gated_act=True
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.0,
}
TINY_UMT5: dict[str, Any] = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 4}
TINY_VAE: dict[str, Any] = {"base_dim": 8, "num_res_blocks": 1}
TEXT_TOKENS = 512
FULL_STEPS = 40
GUIDE_HIGH, GUIDE_LOW = 4.0, 3.0
CACHE_SPEC = "fbc:0.05"  # the cache mode's fixed threshold (the skip decision is meaningless on random weights)
PROMPT = "A red fox runs through fresh snow in a birch forest at sunrise, the camera tracking it from the side."
CUDA_ONLY_BACKENDS = ("_native_cudnn", "flash", "_native_flash", "_native_efficient", FLASH_4, SAGE)
FLOPS_FORMULA = (
    "per forward = layers * (8 L D^2 + 4 L^2 D + 4 L D^2 + 4 Lt D^2 + 4 L Lt D + 4 L D F): self-attn q/k/v/o "
    "projections, self-attn QK^T and PV, cross-attn q/o projections, cross-attn k/v projections of the Lt text "
    "tokens, cross-attn QK^T and PV, FFN; L video tokens, Lt = 512 text tokens, D = heads * head_dim, F = ffn_dim, "
    "one multiply-add = 2 FLOPs; patch/text/time embeddings, norms, modulation and the head are left out (<1%)"
)
PROJECTION_METHOD = (
    "measured text_encoding + vae_decode + for each expert: its measured stage seconds + (forwards of the real "
    "40-step plan - forwards measured) x its steady-state seconds per forward (median over its steps after its "
    "first one, whose one-time costs stay in the measured stage)"
)
BUDGET_ALLOWANCE_S = {"fp8": 200.0, "compile": 90.0, "stream": 60.0, "offload": 30.0}
"""Rough extra seconds a mode's setup may take, for the budget check only (issue 9: fp8+compile ~193 s first
call; block-streaming setup 17-28 s per expert); guesses, never reported as results."""


@dataclass(frozen=True)
class Mode:
    """One of our configurations: placement choice, levers (explicit or a preset's) and VAE tiling."""

    placement: str = "auto"
    levers: dict[str, Any] = field(default_factory=dict)  # explicit lever flags (wan.levers.Levers fields)
    preset: str | None = None
    vae_tiling: bool = False


MODES: dict[str, Mode | None] = {  # in the order they run: the most important first
    "peer": None,
    "default": Mode(),
    "preset_exact": Mode(preset="exact"),
    "preset_fast": Mode(preset="fast"),
    "preset_fast@taylorseer:2": Mode(preset="fast", levers={"cache": "taylorseer:2"}),
    "offload": Mode(placement="offload"),
    "stream": Mode(placement="stream"),
    "resident_lean": Mode(placement="resident_lean"),
    "vae_tiling": Mode(vae_tiling=True),
    "compile": Mode(levers={"compile": True}),
    "fp8": Mode(levers={"fp8": "all"}),
    "fp8+compile": Mode(levers={"fp8": "all", "compile": True}),
    "cache": Mode(levers={"cache": CACHE_SPEC}),
    "vae_bf16": Mode(levers={"vae_dtype": "bfloat16"}),
    **{f"attention:{b}": Mode(levers={"attention_backend": b}) for b in ("native", *CUDA_ONLY_BACKENDS)},
}


# ----------------------------------------------------------------------------------- models
@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def keep_fp32_modules(model: torch.nn.Module) -> None:
    """Make ``_keep_in_fp32_modules`` parameters fp32, the rule ``from_pretrained(torch_dtype=...)`` applies."""
    keep = model._keep_in_fp32_modules or []
    for name, param in model.named_parameters():
        if any(part in keep for part in name.split(".")):
            param.data = param.data.float()


def text_embeddings(rows: int, dim: int, device: torch.device, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """[1, 512, dim] like umT5's output: ``rows`` random rows, zeros past the prompt's length."""
    generator = torch.Generator().manual_seed(seed)
    embeds = torch.zeros(1, TEXT_TOKENS, dim)
    embeds[:, :rows] = torch.randn(1, rows, dim, generator=generator)
    return embeds.to(device, dtype)


def build_expert(config: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int, std: float):
    """A random expert made on ``device`` in ``dtype`` (no CPU copy: 2 x 28.6 GB must fit next to activations).

    Weight matrices are drawn N(0, std); ``_keep_in_fp32_modules`` parameters become fp32, by the rule
    ``from_pretrained(torch_dtype=...)`` uses, so kernels and casts are those of a loaded checkpoint.
    """
    torch.manual_seed(seed)
    with torch.device(device), default_dtype(dtype):
        model = WanTransformer3DModel(**config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2 and not name.endswith("scale_shift_table"):
                param.normal_(0.0, std)
        keep_fp32_modules(model)
    return model.eval().requires_grad_(False)


def build_text_encoder(config: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int):
    """A random umT5 encoder made on ``device`` (transformers' own init), ``wo`` kept fp32 as a bf16 load does."""
    torch.manual_seed(seed)
    with torch.device(device), default_dtype(dtype):
        model = UMT5EncoderModel(UMT5Config(**config))
    with torch.no_grad():
        keep_fp32_modules(model)
    return model.eval().requires_grad_(False)


def build_vae(config: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int) -> AutoencoderKLWan:
    """A random Wan2.1 VAE (diffusers' default config) made on ``device``."""
    torch.manual_seed(seed)
    with torch.device(device), default_dtype(dtype):
        model = AutoencoderKLWan(**config)
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


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


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


def loop_probe(expert: torch.nn.Module, inputs: dict[str, Any], repeats: int, device: torch.device) -> dict[str, Any]:
    """Seconds of one forward taken out of the loop: on the loop's own last inputs, then with random latents,
    then with random latents and text embeddings (``profile_forward.py``'s inputs).

    Against the loop's steady seconds per forward this splits a gap between the loop and an isolated
    forward into the loop's own work (all three faster than in the loop) and the inputs' values, which
    change the power drawn at the GPU's power cap and so its clock (only ``captured`` as slow).
    """
    generator = torch.Generator().manual_seed(0)

    def random_like(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=generator).to(t.device, t.dtype)

    random_latents = {**inputs, "hidden_states": random_like(inputs["hidden_states"])}
    variants = {
        "captured": inputs,
        "random_latents": random_latents,
        "random_inputs": {**random_latents, "encoder_hidden_states": random_like(inputs["encoder_hidden_states"])},
    }
    result: dict[str, Any] = {}
    with torch.no_grad():
        for name, kwargs in variants.items():
            expert(**kwargs)  # a first call after switching inputs
            seconds = []
            for _ in range(repeats):
                start = now(device)
                expert(**kwargs)
                seconds.append(now(device) - start)
            result[name] = {"median_s": statistics.median(seconds), "seconds": seconds}
    return result


class ForwardCounter:
    """Counts DiT forwards and their token counts per expert with pre-hooks, independently of either loop."""

    def __init__(self, experts: dict[str, torch.nn.Module], patch: tuple[int, int, int]):
        self.tokens: dict[str, list[int]] = {name: [] for name in experts}
        self.last_inputs: dict[str, dict[str, Any]] = {}  # each expert's latest keyword inputs, for the loop probe
        self.patch_volume = math.prod(patch)
        for name, expert in experts.items():
            expert.register_forward_pre_hook(self._hook(name), with_kwargs=True)

    def _hook(self, name: str) -> Callable:
        def record(_module, args, kwargs):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            self.tokens[name].append(math.prod(hidden.shape[2:]) // self.patch_volume)
            if not args:
                self.last_inputs[name] = dict(kwargs)

        return record

    def reset(self) -> None:
        for calls in self.tokens.values():
            calls.clear()

    def total(self) -> int:
        return sum(len(calls) for calls in self.tokens.values())

    def summary(self, config: dict[str, Any]) -> dict[str, Any]:
        return {
            "forwards": {name: len(calls) for name, calls in self.tokens.items()},
            "tokens": {name: sum(calls) for name, calls in self.tokens.items()},
            "flops": sum(forward_flops(config, t) for calls in self.tokens.values() for t in calls),
        }


class StepClock:
    """Seconds and DiT forwards of every step, marked from a per-step callback of either loop."""

    def __init__(self, device: torch.device, counter: ForwardCounter):
        self.device, self.counter = device, counter
        self.marks: list[tuple[str, float, int]] = []  # (expert, seconds, forwards)
        self.last, self.count = 0.0, 0
        self.peak_gb: float | None = None  # peak device memory up to the last step marked (before decode)

    def restart(self) -> None:
        self.last, self.count = now(self.device), self.counter.total()

    def mark(self, expert: str) -> None:
        t, count = now(self.device), self.counter.total()
        self.marks.append((expert, t - self.last, count - self.count))
        self.last, self.count = t, count
        self.peak_gb = peak_memory_gb(self.device)


# ----------------------------------------------------------------------------------- plans
def scaled_generation(fields: dict[str, Any], steps: int) -> dict[str, Any]:
    """A preset's generation defaults (set for 40 steps) at ``steps``: CFG truncation scaled, at least 1 step."""
    return {
        k: max(1, round(v * steps / FULL_STEPS)) if k.startswith("cfg_truncate") and v else v for k, v in fields.items()
    }


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


def plan_summary(plan: list[StepPlan]) -> dict[str, Any]:
    return {
        "high_noise_steps": sum(p.expert == HIGH for p in plan),
        "low_noise_steps": sum(p.expert == LOW for p in plan),
        "forwards": {e: sum(p.forwards for p in plan if p.expert == e) for e in (HIGH, LOW)},
        "cond_only_steps": sum(not p.use_cfg for p in plan),
    }


def steady_seconds_per_forward(marks: list[tuple[str, float, int]], expert: str) -> float | None:
    """Median seconds per forward over the expert's steps after its first (which carries one-time costs)."""
    steps = [(s, f) for e, s, f in marks if e == expert and f > 0]
    steady = steps[1:] or steps
    return statistics.median(s / f for s, f in steady) if steady else None


def project_40(measured: dict[str, Any], plan40: list[StepPlan]) -> dict[str, Any]:
    """The labelled 40-step end-to-end projection of one measured run (``PROJECTION_METHOD``)."""
    summary = plan_summary(plan40)
    stages = dict(measured["stages"])
    for expert, stage in ((HIGH, "high_noise"), (LOW, "low_noise")):
        extra = summary["forwards"][expert] - measured["forwards"][expert]
        rate = measured["steady_seconds_per_forward"][expert]
        if extra and rate is None:
            return {"label": "PROJECTION not possible: no measured step of the " + expert + " expert"}
        stages[stage] = stages.get(stage, 0.0) + extra * (rate or 0.0)
    return {
        "label": "PROJECTION of the 40-step run from this measured run, not a measured 40-step run",
        "method": PROJECTION_METHOD,
        **summary,
        "stages": stages,
        "seconds": sum(stages.values()),
    }


# ----------------------------------------------------------------------------------- the benchmark
class Bench:
    """One benchmark run: the model parts, the modes, the JSON report and the time budget."""

    def __init__(self, args: argparse.Namespace, started: float):
        self.args = args
        self.started = started
        self.device = torch.device(args.device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = getattr(torch, args.dtype)
        self.vae_dtype = getattr(torch, args.vae_dtype)
        self.model_config = dict(A14B_CONFIG, **(TINY_OVERRIDES if args.tiny else {}))
        self.model_config["num_layers"] = args.layers if args.layers is not None else (2 if args.tiny else 40)
        base = load_task_config("t2v-A14B")
        self.task = dataclasses.replace(base, sizes=(args.size,), default_size=args.size, frame_num=args.frame_num)
        width, height = self.task.parse_size(args.size)
        stride_t, stride_h, stride_w = self.task.vae_stride
        frames = latent_frame_count(args.frame_num, stride_t)
        self.tokens = frames * (height // stride_h // 2) * (width // stride_w // 2)
        self.shape = {"tokens": self.tokens, "frames": args.frame_num, "height": height, "width": width}
        self.dirty = False  # the experts carry a lever (fp8, compile, cache hooks, streaming hooks)
        self.report: dict[str, Any] = {
            "status": "running",
            "command": shlex.join([sys.executable, *sys.argv]),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "transformers": transformers.__version__,
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
                "latent_frames": frames,
                "tokens": self.tokens,
                "text_tokens": TEXT_TOKENS,
                "prompt": args.prompt,
                "steps": args.steps,
                "warmup_steps": args.warmup_steps,
                "dtype": args.dtype,
                "vae_dtype": args.vae_dtype,
                "tiny": args.tiny,
                "model_config": self.model_config,
                "init_std": args.init_std,
                "guide_scales": [GUIDE_HIGH, GUIDE_LOW],
                "cache_spec": CACHE_SPEC,
                "plan_40": plan_summary(step_plan(self.task, FULL_STEPS, {})),
            },
            "flops_formula": FLOPS_FORMULA,
            "flops_per_forward": forward_flops(self.model_config, self.tokens),
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
        self.skip(
            name, f"over budget: {self.elapsed():.0f} s spent + ~{estimate_s:.0f} s > --budget_s {self.args.budget_s}"
        )
        return False

    def skip(self, name: str, reason: str) -> None:
        logger.warning("skipping %s (%s)", name, reason)
        self.report["skipped"][name] = reason

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
            self.report["errors"][name] = traceback.format_exc(limit=6)
            failed = True
        if failed:  # outside the handler, so the failed stage's frames and tensors can be freed
            self.dirty = True  # a lever may be half applied
            self.pipe = None
            free_memory(self.device)
        self.save()

    # ------------------------------------------------------------------ models
    def build(self) -> None:
        """All parts on the device (the offload modes move them to the CPU before they start)."""
        start = now(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
        text_config = dict(UMT5_XXL, **(TINY_UMT5 if self.args.tiny else {}))
        if self.args.tiny:
            text_config.update(d_model=self.model_config["text_dim"], vocab_size=len(self.tokenizer))
        self.text_encoder = build_text_encoder(text_config, self.device, self.dtype, 2)
        self.vae = build_vae(TINY_VAE if self.args.tiny else {}, self.device, self.vae_dtype, 3)
        self.build_experts()
        params = {
            "per_expert": sum(p.numel() for p in self.experts[HIGH].parameters()),
            "text_encoder": sum(p.numel() for p in self.text_encoder.parameters()),
            "vae": sum(p.numel() for p in self.vae.parameters()),
        }
        self.report["build"] = {
            "seconds": now(self.device) - start,
            "params": params,
            "text_encoder_config": text_config,
            "memory_gb_after_build": peak_memory_gb(self.device),
        }
        logger.info("built in %.1f s: %s parameters", self.report["build"]["seconds"], params)

    def build_experts(self) -> None:
        self.experts = {
            HIGH: build_expert(self.model_config, self.device, self.dtype, 0, self.args.init_std),
            LOW: build_expert(self.model_config, self.device, self.dtype, 1, self.args.init_std),
        }
        self.counter = ForwardCounter(self.experts, tuple(self.model_config["patch_size"]))
        self.pipe: WanT2V | None = None
        self.dirty = False

    def clean_experts(self) -> float:
        """Fresh experts (same seeds, so the same weights) after a mode left levers on them; seconds spent."""
        if not self.dirty:
            return 0.0
        start = now(self.device)
        self.pipe = self.experts = self.counter = None
        reset_compiled()
        free_memory(self.device)
        self.build_experts()
        return now(self.device) - start

    def parts(self) -> list[torch.nn.Module]:
        return [self.text_encoder, self.vae, *self.experts.values()]

    def measure_matmul(self) -> None:
        n = self.args.matmul_n or (256 if self.args.tiny else 8192)
        self.report["matmul_peak"] = matmul_peak(n, self.device, self.dtype)
        logger.info("matmul peak %.1f TFLOP/s", self.report["matmul_peak"]["tflops"])

    def reset_vae(self) -> None:
        """Undo what a mode before this one did to the shared VAE (tiling, the VAE precision lever)."""
        self.vae.disable_tiling()
        self.vae.to(dtype=self.vae_dtype)

    # ------------------------------------------------------------------ the peer
    def run_peer(self, steps: int) -> dict[str, Any]:
        """diffusers' WanPipeline, everything resident, text encoding and decode included (output_type="np")."""
        rebuild_s = self.clean_experts()
        self.reset_vae()
        for expert in self.experts.values():
            expert.reset_attention_backend()
        for module in self.components():
            module.to(self.device)
        pipeline = WanPipeline(
            tokenizer=self.tokenizer,
            text_encoder=self.text_encoder,
            vae=self.vae,
            scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=12.0),
            transformer=self.experts[HIGH],
            transformer_2=self.experts[LOW],
            boundary_ratio=self.task.boundary,
        )
        pipeline.set_progress_bar_config(disable=True)
        clock = StepClock(self.device, self.counter)
        encode, text_seconds = pipeline.encode_prompt, [0.0]

        def timed_encode(*args, **kwargs):
            start = now(self.device)
            out = encode(*args, **kwargs)
            text_seconds[0] += now(self.device) - start
            clock.restart()
            return out

        def on_step_end(_pipe, _index: int, timestep: torch.Tensor, _kwargs: dict) -> dict:
            clock.mark(route(float(timestep), self.task.boundary, self.task.num_train_timesteps))
            return {}

        pipeline.encode_prompt = timed_encode
        width, height = self.task.parse_size(self.args.size)

        def call(n: int) -> Any:
            return pipeline(
                prompt=self.args.prompt,
                negative_prompt=self.task.negative_prompt,
                height=height,
                width=width,
                num_frames=self.args.frame_num,
                num_inference_steps=n,
                guidance_scale=GUIDE_HIGH,
                guidance_scale_2=GUIDE_LOW,
                generator=torch.Generator().manual_seed(self.args.seed),
                output_type="np",
                return_dict=False,
                callback_on_step_end=on_step_end,
                max_sequence_length=TEXT_TOKENS,
            )[0]

        start = now(self.device)
        call(self.args.warmup_steps)
        warmup_s = now(self.device) - start
        clock.marks.clear()
        text_seconds[0] = 0.0
        self.counter.reset()
        reset_peak_memory(self.device)
        start = now(self.device)
        video = call(steps)
        end = now(self.device)
        stages = {
            "text_encoding": text_seconds[0],
            "high_noise": sum(s for e, s, _ in clock.marks if e == HIGH),
            "low_noise": sum(s for e, s, _ in clock.marks if e == LOW),
            "vae_decode": end - clock.last,  # diffusers' decode and its conversion to numpy
        }
        finite = bool(torch.isfinite(torch.from_numpy(video)).all())
        pipeline = video = None  # the pipeline holds references to every part
        free_memory(self.device)
        setup = {"rebuild_s": rebuild_s, "warmup_s": warmup_s}
        info = {"kind": "peer", "placement": "resident (all parts on the device)", "levers": {}, "generation": {}}
        record = self.summarise(info, setup, end - start, stages, clock, steps, {}, finite)
        self.probe_loop(record, None)
        return record

    # ------------------------------------------------------------------ ours
    def levers_of(self, mode: Mode) -> tuple[Levers, list[str]]:
        """The product's resolution: a preset's levers (minus what this hardware lacks) or the explicit ones."""
        return resolve_levers(mode.preset, dict(mode.levers), self.device)

    def unavailable(self, mode: Mode) -> str | None:
        """Why ``mode`` cannot run on this device (recorded as the skip reason), or None."""
        backend = mode.levers.get("attention_backend")
        if self.device.type != "cuda":
            if backend in CUDA_ONLY_BACKENDS:
                return f"the {backend} attention backend needs CUDA"
            if mode.levers.get("compile"):
                return "torch.compile modes run on CUDA only here (inductor's CPU build of the toy model is slow)"
            if mode.placement == "stream":
                return "block streaming needs CUDA (wan.placement.BlockStream)"
        try:
            self.levers_of(mode)
        except ConfigError as exc:
            return str(exc)
        if backend and backend not in (FLASH_4, SAGE):  # checked with the levers: installed kernels, no Hub
            from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

            try:  # the check diffusers runs when a model is set to the backend
                _check_attention_backend_requirements(AttentionBackendName(backend))
            except (RuntimeError, ImportError, ValueError) as exc:
                return str(exc).splitlines()[0]
        return None

    def prepare(self, mode: Mode, steps: int) -> tuple[WanT2V, dict[str, Any], dict[str, Any]]:
        """A WanT2V placed and levered as the product does it (``generate.load_pipeline``), with setup seconds."""
        setup: dict[str, Any] = {"rebuild_s": self.clean_experts()}
        self.reset_vae()
        for expert in self.experts.values():  # an attention mode before this one set its backend
            expert.reset_attention_backend()
        start = now(self.device)
        if mode.placement in ("offload", "stream"):  # a real load leaves the weights in CPU memory
            for module in self.components():
                module.to("cpu")
        else:  # built on the device; the placement decides where the text encoder waits
            for module in (self.vae, *self.experts.values()):
                module.to(self.device)
        setup["move_parts_s"] = now(self.device) - start
        components = WanComponents(
            tokenizer=self.tokenizer,
            text_encoder=self.text_encoder,
            vae=self.vae,
            high_noise_model=self.experts[HIGH],
            low_noise_model=self.experts[LOW],
            layout="diffusers",
        )
        pipe = WanT2V(self.task, components, device=self.device, placement=Placement(reason="built by the benchmark"))
        levers, notes = self.levers_of(mode)
        start = now(self.device)
        apply_placement(pipe, choose_placement(pipe, mode.placement, **self.shape))
        setup["placement_s"] = now(self.device) - start
        self.dirty = True  # from here on a lever or a placement hook may be on the experts
        start = now(self.device)
        apply_levers(pipe, levers)
        setup["levers_s"] = now(self.device) - start  # fp8 quantisation happens here, compilation in the warm-up
        if mode.vae_tiling:
            self.vae.enable_tiling()
        changed = any(value for name, value in levers.as_dict().items() if name != "attention_backend")
        self.dirty = changed or pipe.placement.name == "block_stream"  # attention backends are reset above
        generation = scaled_generation(preset_generation_defaults(mode.preset), steps)
        info = {
            "kind": "ours",
            "placement": pipe.placement.name,
            "placement_reason": pipe.placement.reason,
            "levers": levers.as_dict(),
            "preset": mode.preset,
            "preset_notes": notes,
            "vae_tiling": mode.vae_tiling,
            "vae_dtype": str(self.vae.dtype).removeprefix("torch."),  # after the levers: what the decode runs in
            "generation": generation,
            "generation_at_40": preset_generation_defaults(mode.preset),
        }
        return pipe, setup, info

    def run_ours(self, name: str, mode: Mode, steps: int) -> dict[str, Any]:
        """``WanT2V.generate`` (text + sampling + decode) after a warm-up; per-step marks from ``on_step``."""
        pipe, setup, info = self.prepare(mode, steps)
        self.pipe = pipe
        clock = StepClock(self.device, self.counter)

        def settings(n: int) -> GenerationSettings:
            fields = scaled_generation(preset_generation_defaults(mode.preset), n)
            return GenerationSettings(prompt=self.args.prompt, seed=self.args.seed, sample_steps=n, **fields)

        compiled_before = compile_seconds()
        start = now(self.device)
        pipe.generate(settings(self.args.warmup_steps), progress=False)
        setup["warmup_s"] = now(self.device) - start
        setup["warmup_compile_s"] = compile_seconds() - compiled_before

        self.counter.reset()
        reset_peak_memory(self.device)

        def on_step(plan: StepPlan, _latents: torch.Tensor) -> None:
            clock.mark(plan.expert)

        start = now(self.device)
        clock.restart()
        with counting_computed(pipe) as computed:
            result: GenerationResult = pipe.generate(settings(steps), progress=False, on_step=on_step)
        end = now(self.device)
        expert, seconds, forwards = clock.marks[0]  # its mark started before text encoding
        clock.marks[0] = (expert, seconds - result.timings["text_encoding"], forwards)
        stages = {k: result.timings[k] for k in STAGES if k in result.timings}
        finite = bool(torch.isfinite(result.video).all())
        extra: dict[str, Any] = {}
        if computed:
            counted = self.counter.summary(self.model_config)["forwards"]
            extra["computed_forwards"] = computed
            extra["skip_fraction"] = 1 - sum(computed.values()) / max(1, sum(counted.values()))
            extra["skip_note"] = "random weights: the skip decision says nothing about real checkpoints"
        record = self.summarise(info, setup, end - start, stages, clock, steps, extra, finite, result)
        if name == "cache":
            record["skip_cost"] = self.skip_cost(pipe)
        not_probed = None
        if info["levers"].get("cache"):
            not_probed = "a step cache would skip the probe's forwards"
        elif pipe.placement.name != "resident":
            not_probed = f"the {pipe.placement.name} placement moves the expert off the device after sampling"
        self.probe_loop(record, not_probed)
        return record

    def probe_loop(self, record: dict[str, Any], not_probed: str | None) -> None:
        """With ``--loop_probe N``: the high-noise expert's forward out of the loop (``loop_probe``), N times each."""
        if not self.args.loop_probe:
            return
        if not_probed:
            record["loop_probe"] = {"skipped": not_probed}
            return
        probe = loop_probe(self.experts[HIGH], self.counter.last_inputs[HIGH], self.args.loop_probe, self.device)
        record["loop_probe"] = {"in_loop_s": record["measured"]["steady_seconds_per_forward"][HIGH], **probe}
        logger.info(
            "  loop probe: in the loop %s s per forward; alone %s",
            record["loop_probe"]["in_loop_s"],
            ", ".join(f"{k} {v['median_s']:.3f} s" for k, v in probe.items()),
        )

    def skip_cost(self, pipe: WanT2V) -> dict[str, Any]:
        """Seconds of a forward that First Block Cache skips (all blocks but the first) vs a full one.

        Within one cache context the first call computes every block; a second call on the same input
        changes the first block's residual by 0, under any threshold, so the hooks skip the rest.
        The compute counter confirms which calls computed.
        """
        expert = pipe.experts[HIGH]
        width, height = self.task.parse_size(self.args.size)
        _, stride_h, stride_w = self.task.vae_stride
        frames = latent_frame_count(self.args.frame_num, self.task.vae_stride[0])
        channels = self.model_config["in_channels"]
        hidden = torch.randn(1, channels, frames, height // stride_h, width // stride_w, device=self.device)
        hidden = hidden.to(expert.dtype)
        context = pipe.encode_text([self.args.prompt]).to(expert.dtype)
        timestep = torch.full((1,), 900.0, device=self.device)
        full, skipped, computed = [], [], []
        with torch.no_grad():
            for _ in range(self.args.repeats):
                expert._reset_stateful_cache()
                with expert.cache_context("skip_probe"):
                    for times in (full, skipped):
                        before = pipe.compute_counter.snapshot()[HIGH]
                        start = now(self.device)
                        expert(
                            hidden_states=hidden, timestep=timestep, encoder_hidden_states=context, return_dict=False
                        )
                        times.append(now(self.device) - start)
                        computed.append(pipe.compute_counter.snapshot()[HIGH] - before)
        full_s, skipped_s = statistics.median(full), statistics.median(skipped)
        return {
            "full_forward_s": full_s,
            "skipped_forward_s": skipped_s,
            "skipped_over_full": skipped_s / full_s,
            "all_full_s": full,
            "all_skipped_s": skipped,
            "computed_per_call": computed,  # 1, 0, 1, 0, ...: full then skipped
            "tokens": self.tokens,
        }

    def summarise(
        self,
        info: dict[str, Any],
        setup: dict[str, Any],
        seconds: float,
        stages: dict[str, float],
        clock: StepClock,
        steps: int,
        extra: dict[str, Any],
        finite: bool,
        result: GenerationResult | None = None,
    ) -> dict[str, Any]:
        """One mode's record: what was measured, and apart from it the labelled 40-step projection."""
        counted = self.counter.summary(self.model_config)
        stages = {**stages, "other": seconds - sum(stages.values())}
        plan = step_plan(self.task, steps, info["generation"])
        steps_by_expert = {e: sum(m[0] == e for m in clock.marks) for e in (HIGH, LOW)}
        sampling_s = stages["high_noise"] + stages["low_noise"]
        measured = {
            "label": f"MEASURED: one end-to-end run of {steps} steps after a warm-up run",
            "seconds": seconds,
            "stages": stages,
            "steps": steps_by_expert,
            "seconds_per_step": {
                e: stages[s] / steps_by_expert[e] if steps_by_expert[e] else None
                for e, s in ((HIGH, "high_noise"), (LOW, "low_noise"))
            },
            "steady_seconds_per_forward": {e: steady_seconds_per_forward(clock.marks, e) for e in (HIGH, LOW)},
            "step_marks": [list(m) for m in clock.marks],  # [expert, seconds, forwards] per step
            "forwards": counted["forwards"],
            "tokens": counted["tokens"],
            "plan": plan_summary(plan),
            "sampling_tflops": counted["flops"] / sampling_s / 1e12 if sampling_s else None,
            "peak_memory_gb": peak_memory_gb(self.device),
            "peak_memory_gb_through_sampling": clock.peak_gb,  # text encoding + sampling, before the decode
            "video_finite": finite,
            **extra,
        }
        if result is not None:
            measured["loop_forwards"] = result.forwards  # what the loop itself reports, to compare with the hooks
        plan40 = step_plan(self.task, FULL_STEPS, info.get("generation_at_40", {}))
        return {
            **info,
            "setup_seconds": setup,
            "measured": measured,
            "projected_40_steps": project_40(measured, plan40),
        }

    def record(self, name: str, result: dict[str, Any]) -> None:
        self.report["modes"][name] = result
        m = result["measured"]
        logger.info(
            "  %s: %.2f s end to end (%s), forwards %s, peak %s GB",
            name,
            m["seconds"],
            ", ".join(f"{k} {v:.2f}" for k, v in m["stages"].items()),
            m["forwards"],
            None if m["peak_memory_gb"] is None else round(m["peak_memory_gb"], 1),
        )

    def estimate(self, mode: Mode | None) -> float:
        """Seconds a mode should take (warm-up + timed run, like the peer's), plus its setup allowance."""
        peer = self.report["modes"].get("peer")
        if peer is None or mode is None:
            return 0.0
        base = peer["measured"]["seconds"] + peer["setup_seconds"]["warmup_s"]
        levers = dict(mode.levers)
        if mode.preset:
            levers.update({k: v for k, v in self.levers_of(mode)[0].as_dict().items() if v})
        keys = [k for k in ("fp8", "compile") if levers.get(k)] + [mode.placement]
        return base + sum(BUDGET_ALLOWANCE_S.get(k, 0.0) for k in keys)

    def finish(self) -> None:
        """Ratios to the peer, measured and projected."""
        modes = self.report["modes"]
        peer = modes.get("peer")
        for result in modes.values():
            for key in ("measured", "projected_40_steps"):
                ref = peer[key].get("seconds") if peer else None
                value = result[key].get("seconds")
                result[key]["speedup_vs_peer"] = ref / value if ref and value else None
        self.report["status"] = "done"


STAGES = ("text_encoding", "high_noise", "low_noise", "completion", "vae_decode")


def mode_of(name: str) -> Mode | None:
    """A mode by name: one of ``MODES``, optionally with levers after ``~`` (``preset_exact~attention_backend=X``)."""
    base, _, lever_text = name.partition("~")
    mode = MODES[base]
    if not lever_text:
        return mode
    if mode is None:
        raise ConfigError("the peer takes no levers")
    return replace(mode, levers={**mode.levers, **parse_levers(lever_text)})


def selected_modes(text: str) -> list[str]:
    """--modes in run order (``MODES``' order, each base's variants after it), the peer always first."""
    asked = [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted({m for m in asked if m.partition("~")[0] not in MODES})
    if unknown:
        raise SystemExit(f"error: unknown --modes {', '.join(unknown)}; choose from {', '.join(MODES)}")
    try:
        for name in asked:
            mode_of(name)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from exc
    order = list(MODES)
    ranked = sorted(dict.fromkeys(asked), key=lambda m: order.index(m.partition("~")[0]))
    return ["peer", *(m for m in ranked if m != "peer")]


def run(args: argparse.Namespace, started: float) -> dict[str, Any]:
    modes = selected_modes(args.modes)
    bench = Bench(args, started)
    with bench.stage("build the models"):
        bench.build()
    if bench.report["errors"]:
        return bench.report
    with bench.stage("matmul peak"):
        bench.measure_matmul()
    for name in modes:
        mode = mode_of(name)
        if mode is not None and (reason := bench.unavailable(mode)):
            bench.skip(name, reason)
            continue
        if name != "peer" and not bench.fits(name, bench.estimate(mode)):
            continue
        with bench.stage(f"{name} ({args.warmup_steps}-step warm-up, then {args.steps} steps)"):
            bench.record(name, bench.run_peer(args.steps) if mode is None else bench.run_ours(name, mode, args.steps))
        if name == "peer" and "peer" not in bench.report["modes"]:
            break  # without the peer no ratio can be made
    bench.finish()
    bench.save()
    return bench.report


def print_table(report: dict[str, Any]) -> None:
    """The summary a person reads last: the measured runs, then the labelled 40-step projections."""

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    setup = report["setup"]
    steps, peak = setup["steps"], report.get("matmul_peak", {}).get("tflops")
    print(
        f"\n{report['device']}  size {setup['size']}  frames {setup['frame_num']}  tokens {setup['tokens']}  "
        f"matmul peak {fmt(peak, '.0f')} TFLOP/s"
    )
    header = (
        f"{'mode':<26}{f's ({steps} st)':>10}{'text':>7}{'high':>8}{'low':>8}{'decode':>8}{'s/st hi':>8}"
        f"{'s/st lo':>8}{'fwd':>5}{'x peer':>7}{'proj40 s':>9}{'x peer':>7}{'peak GB':>8}{'setup s':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, r in report["modes"].items():
        m, p = r["measured"], r["projected_40_steps"]
        st = m["stages"]
        setup_s = sum(v for k, v in r["setup_seconds"].items() if k != "warmup_s")
        print(
            f"{name:<26}{m['seconds']:>10.1f}{st['text_encoding']:>7.2f}{st['high_noise']:>8.2f}"
            f"{st['low_noise']:>8.2f}{st['vae_decode']:>8.2f}{fmt(m['seconds_per_step'][HIGH], '.2f'):>8}"
            f"{fmt(m['seconds_per_step'][LOW], '.2f'):>8}{sum(m['forwards'].values()):>5}"
            f"{fmt(m.get('speedup_vs_peer'), '.2f'):>7}{fmt(p.get('seconds'), '.0f'):>9}"
            f"{fmt(p.get('speedup_vs_peer'), '.2f'):>7}{fmt(m['peak_memory_gb'], '.1f'):>8}{setup_s:>8.1f}"
        )
    print(
        f"s ({steps} st): MEASURED end to end (text + sampling + decode) after a warm-up; x peer: speed-up over "
        "diffusers' WanPipeline in this run (>1 is faster); proj40: PROJECTION of the released 40-step run "
        "(26 high + 14 low steps); setup s: rebuild + moves + placement + levers + compile, outside the timing"
    )
    for name, r in report["modes"].items():
        if "skip_cost" in r:
            c = r["skip_cost"]
            print(
                f"{name}: a skipped forward {c['skipped_forward_s']:.3f} s vs a full one {c['full_forward_s']:.3f} s "
                f"({c['skipped_over_full']:.3f}x); skip fraction in the run {r['measured']['skip_fraction']:.2f}"
            )
    for name, r in report["modes"].items():
        probe = r.get("loop_probe", {})
        if "captured" in probe:
            alone = ", ".join(
                f"{k} {probe[k]['median_s']:.3f}" for k in ("captured", "random_latents", "random_inputs")
            )
            print(f"{name}: a high-noise forward in the loop {fmt(probe['in_loop_s'], '.3f')} s, alone ({alone}) s")
    for name, reason in report["skipped"].items():
        print(f"skipped {name}: {reason}")
    for name in report["errors"]:
        print(f"FAILED {name} (traceback in the JSON)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--size", default="832*480", help="W*H")
    p.add_argument("--frame_num", type=int, default=81)
    p.add_argument("--steps", type=int, default=6, help="sampling steps of the timed runs (6: 4 high + 2 low)")
    p.add_argument(
        "--warmup_steps", type=int, default=3, help="steps of each mode's warm-up run (3 reach both experts)"
    )
    p.add_argument("--repeats", type=int, default=2, help="full/skipped forward pairs of the cache mode's skip probe")
    p.add_argument(
        "--loop_probe",
        type=int,
        default=0,
        help="after each resident mode without a cache, time N high-noise forwards out of the loop (0: off)",
    )
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from: {', '.join(MODES)}")
    p.add_argument("--out", default="bench_a14b.json")
    p.add_argument("--layers", type=int, default=None, help="transformer blocks (default 40; 2 with --tiny)")
    p.add_argument("--tiny", action="store_true", help="toy dims of every part for a CPU check")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--vae_dtype", default="float32", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--init_std", type=float, default=0.02, help="std of the experts' random weight matrices")
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--matmul_n", type=int, default=None, help="matmul size for the peak (default 8192; 256 tiny)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget_s", type=float, default=480.0, help="skip modes that would end past this many seconds")
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
