"""Where one expert forward's GPU time goes: variants (compile settings, fused kernels) timed and profiled.

A variant is ``eager`` or ``compile`` plus ``+``-joined flags; each runs on a fresh random expert with the
engine's own levers, is timed after a warm-up and profiled once: GPU time by kernel class (GEMM,
attention, fused elementwise Triton, other).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch

from benchmarks.measure import forward_flops, timed
from benchmarks.weights import TINY_VAE, build_expert, build_vae
from wan.levers import Levers, apply_levers
from wan.levers.attention import default_attention_backend
from wan.levers.compile import reset_compiled

KERNEL_CLASSES = (  # first match wins; names of cuBLAS/CUTLASS GEMMs, attention kernels, inductor's kernels
    ("gemm", ("gemm", "nvjet", "sm90_xmma", "cutlass", "ampere_", "sgemm", "matmul")),
    ("attention", ("flash", "fmha", "attention", "kernel_cutlass")),
    ("triton", ("triton",)),
)


VARIANT_FLAGS = ("static", "cdt", "autotune", "fuse", "normrope", "gelu", "sdpa")


def variant_settings(name: str) -> dict[str, Any]:
    """``eager`` or ``compile`` (the exact preset's regional compile), then ``+``-joined flags.

    ``static`` compiles for one token count, ``cdt`` turns on inductor's coordinate-descent tuning,
    ``autotune`` its GEMM autotuning, ``fuse`` the fused attention projections (``fuse_projections``),
    ``normrope`` the fused q/k norm + RoPE (``fuse_norm_rope``), ``gelu`` the GELU epilogue (``fuse_gelu``),
    ``sdpa`` PyTorch's attention instead of the default one (``eager+sdpa`` is the peer's forward).
    """
    base, *flags = name.split("+")
    if base not in ("eager", "compile") or set(flags) - set(VARIANT_FLAGS):
        raise SystemExit(f"error: unknown variant {name!r}: eager or compile, then +flags from {VARIANT_FLAGS}")
    return {
        "compile": base == "compile",
        "dynamic": "static" not in flags,
        "coordinate_descent_tuning": "cdt" in flags,
        "max_autotune": "autotune" in flags,
        "fuse_projections": "fuse" in flags,
        "fuse_norm_rope": "normrope" in flags,
        "fuse_gelu": "gelu" in flags,
        "default_attention": "sdpa" not in flags,
    }


def classify(kernel: str) -> str:
    lowered = kernel.lower()
    for label, keys in KERNEL_CLASSES:
        if any(key in lowered for key in keys):
            return label
    return "other"


def kernel_breakdown(run: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """GPU milliseconds of one forward by kernel class, and its 15 most expensive kernels."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize(device)
    totals: dict[str, float] = {}
    kernels = []
    for event in prof.key_averages():
        ms = event.device_time_total / 1e3
        if ms <= 0:
            continue
        label = classify(event.key)
        totals[label] = totals.get(label, 0.0) + ms
        kernels.append({"kernel": event.key[:160], "class": label, "ms": ms, "calls": event.count})
    kernels.sort(key=lambda k: -k["ms"])
    return {"ms_by_class": totals, "ms_total": sum(totals.values()), "top_kernels": kernels[:15]}


def profile_variant(
    name: str, device: torch.device, repeats: int, config: dict[str, Any], inputs: dict
) -> tuple[dict[str, Any], torch.Tensor]:
    """The variant's timings and kernel profile, and its first output (to compare variants' outputs)."""
    options = variant_settings(name)
    reset_compiled()
    torch._inductor.config.coordinate_descent_tuning = options["coordinate_descent_tuning"]
    torch._inductor.config.max_autotune_gemm = options["max_autotune"]
    expert = build_expert(config, device, torch.bfloat16 if device.type == "cuda" else torch.float32, 0, 0.02)
    pipe = SimpleNamespace(experts={"high_noise": expert}, device=device)
    levers = Levers(
        attention_backend=default_attention_backend(device) if options["default_attention"] else None,
        fuse_projections=options["fuse_projections"],
        fuse_norm_rope=options["fuse_norm_rope"],
        fuse_gelu=options["fuse_gelu"],
    )
    apply_levers(pipe, levers)
    if options["compile"]:
        expert.compile_repeated_blocks(fullgraph=True, dynamic=options["dynamic"])

    def run():
        with torch.no_grad():
            return expert(**inputs, return_dict=False)[0]

    start = time.perf_counter()
    first = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result = {"options": options, "first_forward_s": time.perf_counter() - start}
    timed(run, device, 1)
    seconds = timed(run, device, repeats)
    result["seconds"] = seconds
    result["median_s"] = statistics.median(seconds)
    tokens = inputs["hidden_states"][0, 0].numel() // math.prod(config["patch_size"])
    result["tflops"] = forward_flops(config, tokens) / result["median_s"] / 1e12
    result["output_checksum"] = float(first.float().abs().mean())
    if device.type == "cuda":
        result["profile"] = kernel_breakdown(run, device)
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result, first.float()


def profile_vae(device: torch.device, tiny: bool, latent_shape: tuple[int, ...]) -> dict[str, Any]:
    """Seconds of one decode as the engine runs it (float32), then with cuDNN's autotuner (same math)."""
    vae = build_vae(TINY_VAE if tiny else {}, device, torch.float32, 0)
    latent = torch.randn(latent_shape, device=device)

    def run():
        with torch.no_grad():
            return vae.decode(latent, return_dict=False)[0]

    result = {}
    for label, benchmark in (("float32", False), ("float32_cudnn_benchmark", True)):
        torch.backends.cudnn.benchmark = benchmark
        timed(run, device, 1)
        result[label] = statistics.median(timed(run, device, 3))
    torch.backends.cudnn.benchmark = False
    return result
