"""PyTorch's SDPA kernels on Wan2.2-A14B's self-attention shapes: milliseconds, TFLOP/s, error against flash.

q, k, v come in the layout diffusers' Wan attention hands its backends, (1, L, 40 heads, 128) in
bf16, L the tokens of 81 frames at 480p and 720p; SDPA gets them as (1, heads, L, 128) views, as
diffusers' ``native`` backend does. Each SDPA kernel is forced with ``sdpa_kernel``; mean of
``--repeats`` calls after one. The row ``default`` is PyTorch's own choice (what the ``native``
backend and the peer run). Kernels from other packages run where installed: ``flash_4``
(flash-attn-4 through the engine's ``--attention_backend flash_4`` op), ``flash_4:MxN[:nors][:nool]``
(its Hopper forward with another tile, MMA-PV from shared memory (``nors``) or no intra-warpgroup
overlap (``nool``): the sweep that picks the engine's tile), ``flash_3`` (FlashAttention 3's Hopper
build through the engine's ``--attention_backend flash_3`` op) and ``sage``
(SageAttention, int8 QK^T: approximate). Installed attention packages are listed, so the report
says what else could have been tried.

    python scripts/bench_attention.py --out attention_kernels.json          # GPU (docs/PERFORMANCE.md)
    python scripts/bench_attention.py --device cpu --tokens 256 --out t.json # CPU check (math kernel)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python scripts/bench_attention.py`

from benchmarks.attention import (  # noqa: E402
    KERNELS,
    OTHER_KERNELS,
    THIRD_PARTY,
    installed,
    measure_shape,
    parse_tile,
    released_shapes,
)

logger = logging.getLogger("bench_attention")


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
    shapes = {"custom": args.tokens} if args.tokens else released_shapes()
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
