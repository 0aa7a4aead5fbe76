"""LoRA cost at Wan2.2-A14B size: seconds to load and fuse a rank-64 LoRA into both experts, and a forward's time
with the fused LoRA against the base model's (should be equal: fused weights are plain ``nn.Linear``).

Two random experts with the A14B config are built on the device (``benchmarks.weights.build_expert``); a random
LoRA on every attention and FFN projection of every block is written in the official-Wan naming
(``diffusion_model.blocks.N.self_attn.q.lora_down.weight`` + ``alpha``, as step-distillation LoRAs ship),
then timed through the engine's own path: ``wan.lora.check_loras`` (read, recognise, convert, sha256)
and ``wan.lora.apply_loras`` (peft inject, fuse, unload). The JSON is written after every stage.

    python scripts/bench_lora.py --out docs/results/bench_lora_h200.json        # GPU, A14B size
    python scripts/bench_lora.py --offload_model --out bench_lora_offload.json  # experts parked on the CPU
    python scripts/bench_lora.py --tiny --device cpu --dtype float32 --out t.json   # CPU check
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python scripts/bench_lora.py`

from benchmarks.lora import run  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--size", default="832*480", help="W*H of the timed forwards")
    p.add_argument("--frame_num", type=int, default=81)
    p.add_argument("--repeats", type=int, default=3, help="timed forwards per expert, before and after fusing")
    p.add_argument("--layers", type=int, default=None, help="transformer blocks (default 40; 2 with --tiny)")
    p.add_argument("--tiny", action="store_true", help="toy dims for a CPU check")
    p.add_argument("--offload_model", action="store_true", help="experts on the CPU while the LoRA fuses")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--out", default="bench_lora.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    report = run(args)
    return 0 if report["weights_changed"] and not report["peft_layers_left"] else 1


if __name__ == "__main__":
    sys.exit(main())
