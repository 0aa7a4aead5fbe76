"""Where one A14B expert forward's GPU time goes, and what compile settings and fused projections do to it.

The end-to-end benchmark (``bench_e2e.py``) says how long a run takes; this says why. It builds one
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
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python scripts/profile_forward.py`

from benchmarks.attention import parse_tile  # noqa: E402
from benchmarks.forward_profile import profile_vae, profile_variant  # noqa: E402
from benchmarks.weights import expert_config  # noqa: E402
from wan.levers import attention  # noqa: E402

logger = logging.getLogger("profile_forward")


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
    config = expert_config(args.tiny, args.layers or None)
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
        report["variants"][name], output = profile_variant(
            name, torch.device(args.device), args.repeats, config, inputs
        )
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
        report["vae_decode_s"] = profile_vae(torch.device(args.device), args.tiny, latent_shape)
        Path(args.out).write_text(json.dumps(report, indent=1))
    for name, result in report["variants"].items():
        by_class = result.get("profile", {}).get("ms_by_class", {})
        logger.info("%-24s %.3f s  %s", name, result["median_s"], {k: round(v) for k, v in by_class.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
