"""PyTorch's SDPA kernels on Wan2.2-A14B's self-attention shapes: milliseconds, TFLOP/s, error against flash.

Each kernel is forced with ``sdpa_kernel`` on q, k, v of shape (1, 40 heads, L, 128) in bf16, L the
tokens of 81 frames at 480p and 720p; mean of ``--repeats`` calls after one. The row ``default`` is
PyTorch's own choice (what diffusers' ``native`` backend and the peer run). Installed third-party
attention packages are listed, so the report says what else could have been tried.

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

logger = logging.getLogger("bench_attention")

SHAPES = {"480p": 21 * 30 * 52, "720p": 21 * 45 * 80}  # latent frames x (H/16) x (W/16) at 81 frames
HEADS, HEAD_DIM = A14B_CONFIG["num_attention_heads"], A14B_CONFIG["attention_head_dim"]
KERNELS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
THIRD_PARTY = ("flash_attn", "flash_attn_interface", "flash_attn_cute", "sageattention", "kernels")


def time_ms(fn, device: torch.device, repeats: int) -> float:
    """Mean milliseconds of ``fn`` over ``repeats`` calls, after one untimed call."""
    fn()
    start = now(device)
    for _ in range(repeats):
        fn()
    return (now(device) - start) * 1e3 / repeats


def measure_shape(tokens: int, device: torch.device, dtype: torch.dtype, repeats: int, kernels: list[str]) -> dict:
    """Every kernel on one (1, HEADS, tokens, HEAD_DIM) problem; a kernel this machine lacks records its error."""
    q, k, v = (torch.randn(1, HEADS, tokens, HEAD_DIM, device=device, dtype=dtype) for _ in range(3))
    flops = 4 * HEADS * tokens * tokens * HEAD_DIM
    result: dict[str, Any] = {"tokens": tokens, "flops": flops}
    reference = None
    for name in kernels:
        try:
            with sdpa_kernel([KERNELS[name]]):
                out = F.scaled_dot_product_attention(q, k, v)
                ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v), device, repeats)
        except RuntimeError as exc:
            result[name] = {"error": (str(exc).splitlines() or [type(exc).__name__])[0][:200]}
            continue
        reference = out.float() if reference is None else reference
        error = float((out.float() - reference).norm() / reference.norm())
        result[name] = {"ms": ms, "tflops": flops / ms / 1e9, "relative_error_vs_first": error}
        logger.info("%d tokens %-9s %8.1f ms %6.0f TFLOP/s", tokens, name, ms, flops / ms / 1e9)
    result["default"] = {"ms": time_ms(lambda: F.scaled_dot_product_attention(q, k, v), device, repeats)}
    logger.info("%d tokens default   %8.1f ms", tokens, result["default"]["ms"])
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--tokens", type=int, default=None, help="one problem of this many tokens instead of 480p/720p")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--kernels", default=",".join(KERNELS), help=f"comma-separated, from: {', '.join(KERNELS)}")
    p.add_argument("--out", default="attention_kernels.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    unknown = sorted(set(kernels) - set(KERNELS))
    if unknown:
        raise SystemExit(f"error: unknown --kernels {', '.join(unknown)}; choose from {', '.join(KERNELS)}")
    shapes = {"custom": args.tokens} if args.tokens else SHAPES
    report = {
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "installed_attention_packages": [m for m in THIRD_PARTY if importlib.util.find_spec(m)],
        "shapes": {n: measure_shape(t, device, dtype, args.repeats, kernels) for n, t in shapes.items()},
    }
    Path(args.out).write_text(json.dumps(report, indent=1), encoding="utf-8")
    logger.info("wrote %s", args.out)
    return report


if __name__ == "__main__":
    main()
