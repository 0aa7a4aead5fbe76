"""PyTorch's SDPA kernels on Wan2.2-A14B's self-attention shapes: milliseconds, TFLOP/s, error against flash.

q, k, v come in the layout diffusers' Wan attention hands its backends, (1, L, 40 heads, 128) in
bf16, L the tokens of 81 frames at 480p and 720p; SDPA gets them as (1, heads, L, 128) views, as
diffusers' ``native`` backend does. Each SDPA kernel is forced with ``sdpa_kernel``; mean of
``--repeats`` calls after one. The row ``default`` is PyTorch's own choice (what the ``native``
backend and the peer run). Kernels from other packages run where installed: ``flash_4``
(flash-attn-4 through the engine's ``--attention_backend flash_4`` op), ``flash_4:MxN[:nors][:nool]``
(its Hopper forward with another tile, MMA-PV from shared memory (``nors``) or no intra-warpgroup
overlap (``nool``): the sweep that picks the engine's tile), ``flash_3`` (FlashAttention 3's Hopper
build, ``flash_attn_interface``, as diffusers' ``_flash_3`` backend calls it) and ``sage``
(SageAttention, int8 QK^T: approximate). Installed attention packages are listed, so the report
says what else could have been tried.

    python scripts/bench_attention.py --out attention_kernels.json          # GPU (docs/PERFORMANCE.md)
    python scripts/bench_attention.py --device cpu --tokens 256 --out t.json # CPU check (math kernel)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_a14b import A14B_CONFIG, now  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wan.levers.attention import FlashTile, flash_4_hopper, flash_4_problem, flash_attention_4  # noqa: E402

logger = logging.getLogger("bench_attention")

SHAPES = {"480p": 21 * 30 * 52, "720p": 21 * 45 * 80}  # latent frames x (H/16) x (W/16) at 81 frames
HEADS, HEAD_DIM = A14B_CONFIG["num_attention_heads"], A14B_CONFIG["attention_head_dim"]
KERNELS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
OTHER_KERNELS = ("flash_4", "flash_3", "sage")
THIRD_PARTY = ("flash_attn", "flash_attn_interface", "flash_attn.cute", "sageattention", "kernels")


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent is missing
        return False


def attend(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Kernel ``name`` on (batch, tokens, heads, dim) tensors, the output in that layout."""
    if name.startswith("flash_4"):
        if why := flash_4_problem(q.device):
            raise RuntimeError(why)
        if name == "flash_4":
            return flash_attention_4(q, k, v)
        return flash_4_hopper(q, k, v, parse_tile(name))
    if name == "flash_3":
        if not installed("flash_attn_interface"):
            raise RuntimeError("flash_attn_interface (FlashAttention 3) is not installed")
        from flash_attn_interface import flash_attn_func

        out = flash_attn_func(q, k, v)
        return out[0] if isinstance(out, tuple) else out
    if name == "sage":
        if not installed("sageattention"):
            raise RuntimeError("sageattention is not installed")
        from sageattention import sageattn

        return sageattn(q, k, v, tensor_layout="NHD", is_causal=False)
    with sdpa_kernel([KERNELS[name]]):
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def parse_tile(name: str) -> FlashTile:
    """``flash_4:128x176:nors:nool`` -> FlashTile(128, 176, mma_pv_is_rs=False, intra_wg_overlap=False)."""
    size, *flags = name.split(":")[1:]
    tile_m, tile_n = (int(v) for v in size.split("x"))
    unknown = set(flags) - {"nors", "nool"}
    if unknown:
        raise SystemExit(f"error: unknown flash_4 tile flags {sorted(unknown)} in {name}; use nors, nool")
    return FlashTile(tile_m, tile_n, "nors" not in flags, "nool" not in flags)


def time_ms(fn, device: torch.device, repeats: int) -> float:
    """Mean milliseconds of ``fn`` over ``repeats`` calls, after one untimed call."""
    fn()
    start = now(device)
    for _ in range(repeats):
        fn()
    return (now(device) - start) * 1e3 / repeats


def measure_shape(tokens: int, device: torch.device, dtype: torch.dtype, repeats: int, kernels: list[str]) -> dict:
    """Every kernel on one (1, HEADS, tokens, HEAD_DIM) problem; a kernel this machine lacks records its error."""
    q, k, v = (torch.randn(1, tokens, HEADS, HEAD_DIM, device=device, dtype=dtype) for _ in range(3))
    flops = 4 * HEADS * tokens * tokens * HEAD_DIM
    result: dict[str, Any] = {"tokens": tokens, "flops": flops}
    reference = None
    for name in kernels:
        try:
            out = attend(name, q, k, v)
            ms = time_ms(lambda name=name: attend(name, q, k, v), device, repeats)
        except Exception as exc:  # a kernel this GPU or package lacks, or a tile that does not fit: recorded
            result[name] = {"error": (str(exc).splitlines() or [type(exc).__name__])[0][:200]}
            continue
        reference = out.float() if reference is None else reference
        error = float((out.float() - reference).norm() / reference.norm())
        result[name] = {"ms": ms, "tflops": flops / ms / 1e9, "relative_error_vs_first": error}
        logger.info("%d tokens %-9s %8.1f ms %6.0f TFLOP/s", tokens, name, ms, flops / ms / 1e9)
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    result["default"] = {"ms": time_ms(lambda: F.scaled_dot_product_attention(qh, kh, vh), device, repeats)}
    logger.info("%d tokens default   %8.1f ms", tokens, result["default"]["ms"])
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--tokens", type=int, default=None, help="one problem of this many tokens instead of 480p/720p")
    p.add_argument("--repeats", type=int, default=5)
    choices = [*KERNELS, *OTHER_KERNELS]
    p.add_argument("--kernels", default=",".join(choices), help=f"comma-separated, from: {', '.join(choices)}")
    p.add_argument("--out", default="attention_kernels.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    unknown = sorted(set(kernels) - set(choices) - {k for k in kernels if k.startswith("flash_4:")})
    for name in kernels:
        if name.startswith("flash_4:"):
            parse_tile(name)
    if unknown:
        raise SystemExit(f"error: unknown --kernels {', '.join(unknown)}; choose from {', '.join(choices)}")
    shapes = {"custom": args.tokens} if args.tokens else SHAPES
    report = {
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "installed_attention_packages": [m for m in THIRD_PARTY if installed(m)],
        "shapes": {n: measure_shape(t, device, dtype, args.repeats, kernels) for n, t in shapes.items()},
    }
    Path(args.out).write_text(json.dumps(report, indent=1), encoding="utf-8")
    logger.info("wrote %s", args.out)
    return report


if __name__ == "__main__":
    main()
