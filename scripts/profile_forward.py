"""Where one A14B expert forward's GPU time goes, and what compile settings and fused projections do to it.

The end-to-end benchmark (``bench_a14b.py``) says how long a run takes; this says why. It builds one
random A14B expert (time does not depend on weight values), then for each variant (a fresh expert,
the engine's own levers, one compile setting) times ``--repeats`` forwards after a warm-up and
profiles one forward: GPU time by kernel class (GEMM, attention, fused elementwise Triton, other).
With ``--vae`` it also times the VAE decode of one latent as the engine runs it (float32) and with
cuDNN's autotuner on. JSON to ``--out``.

    python3 scripts/profile_forward.py --variants compile,compile+fuse,compile+static+cdt+fuse --vae --out p.json
    python scripts/profile_forward.py --tiny --device cpu --variants eager,eager+fuse --out t.json   # a CPU check
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_a14b import A14B_CONFIG, TINY_OVERRIDES, TINY_VAE, build_expert, build_vae, forward_flops  # noqa: E402
from bench_attention import parse_tile  # noqa: E402

from wan.levers import Levers, apply_levers, attention  # noqa: E402
from wan.levers.attention import default_attention_backend  # noqa: E402
from wan.levers.compile import reset_compiled  # noqa: E402

logger = logging.getLogger("profile_forward")

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


def timed(run: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def profile_variant(
    name: str, args: argparse.Namespace, config: dict[str, Any], inputs: dict
) -> tuple[dict[str, Any], torch.Tensor]:
    """The variant's timings and kernel profile, and its first output (to compare variants' outputs)."""
    options = variant_settings(name)
    device = torch.device(args.device)
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
    seconds = timed(run, device, args.repeats)
    result["seconds"] = seconds
    result["median_s"] = statistics.median(seconds)
    tokens = inputs["hidden_states"][0, 0].numel() // math.prod(config["patch_size"])
    result["tflops"] = forward_flops(config, tokens) / result["median_s"] / 1e12
    result["output_checksum"] = float(first.float().abs().mean())
    if device.type == "cuda":
        result["profile"] = kernel_breakdown(run, device)
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result, first.float()


def profile_vae(args: argparse.Namespace, latent_shape: tuple[int, ...]) -> dict[str, Any]:
    """Seconds of one decode as the engine runs it (float32), then with cuDNN's autotuner (same math)."""
    device = torch.device(args.device)
    vae = build_vae(TINY_VAE if args.tiny else {}, device, torch.float32, 0)
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="compile,compile+fuse,compile+static,compile+cdt")
    p.add_argument("--size", default="832*480", help="W*H")
    p.add_argument("--frame_num", type=int, default=81)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--tiny", action="store_true", help="toy dims for a CPU check")
    p.add_argument("--vae", action="store_true", help="also time the VAE decode")
    p.add_argument("--flash_4_tile", default=None, help="MxN[:nors][:nool]: FlashAttention 4's Hopper tile to try")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="profile_forward.json")
    args = p.parse_args(argv)
    if args.flash_4_tile:
        attention.HOPPER_HEAD_DIM_128_TILE = parse_tile(f"flash_4:{args.flash_4_tile}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = {**A14B_CONFIG, **(TINY_OVERRIDES if args.tiny else {})}
    if args.layers or args.tiny:
        config["num_layers"] = args.layers or 2
    width, height = (int(v) for v in args.size.split("*"))
    latent_shape = (1, 16, (args.frame_num - 1) // 4 + 1, height // 8, width // 8)
    generator = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    inputs = {
        "hidden_states": torch.randn(latent_shape, generator=generator).to(args.device, dtype),
        "timestep": torch.tensor([900.0], device=args.device),
        "encoder_hidden_states": torch.randn(1, 512, config["text_dim"], generator=generator).to(args.device, dtype),
    }
    report: dict[str, Any] = {"command": " ".join(sys.argv), "torch": torch.__version__, "variants": {}}
    report["flash_4_tile"] = attention.HOPPER_HEAD_DIM_128_TILE
    if args.device.startswith("cuda"):
        report["device"] = torch.cuda.get_device_name(args.device)
    reference = None  # the first variant's output: each variant's relative distance from it
    for name in filter(None, args.variants.split(",")):
        logger.info("variant %s", name)
        report["variants"][name], output = profile_variant(name, args, config, inputs)
        reference = output if reference is None else reference
        report["variants"][name]["rel_error_vs_first"] = float((output - reference).norm() / reference.norm())
        del output
        gc.collect()  # the variant's expert is gone: give its memory back before the next one
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        logger.info("%s: %.3f s per forward", name, report["variants"][name]["median_s"])
        Path(args.out).write_text(json.dumps(report, indent=1))
    if args.vae:
        report["vae_decode_s"] = profile_vae(args, latent_shape)
        Path(args.out).write_text(json.dumps(report, indent=1))
    for name, result in report["variants"].items():
        by_class = result.get("profile", {}).get("ms_by_class", {})
        logger.info("%-24s %.3f s  %s", name, result["median_s"], {k: round(v) for k, v in by_class.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
