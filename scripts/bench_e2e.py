"""End-to-end speed of a Wan2.2 task at full size with random weights: our modes vs diffusers' pipeline.

Time does not depend on weight values, so every part is built with random weights at its real size
(``--task``): T2V-A14B and I2V-A14B (two 14B experts, the Wan2.1 VAE), TI2V-5B (one 5B expert, the
Wan2.2 VAE); experts in bf16 (fp32 where ``from_pretrained(torch_dtype=bfloat16)`` keeps fp32), a
umT5-XXL text encoder (bf16), the VAE in float32 as diffusers' docs load it; I2V gets a synthetic
image at the video's size. In one process it runs the task's diffusers pipeline (the peer, resident:
``WanPipeline``, ``WanImageToVideoPipeline``, or ``WanPipeline(expand_timesteps=True)``) and our
engine in each mode (placement, levers, presets, built by ``wan.engine.build_engine`` as the product
builds it), end to end: text encoding (+ image encoding) + sampling + VAE decode. ``peer_fewstep`` is
the same pipeline with a random rank-``--lora_rank`` distill LoRA pair fused into both experts at 4
steps and guidance 1, the peer of ``preset_lightning`` (which loads the same pair with ``--lora_dir``).
Each mode gets a warm-up run (compilation happens there) and then one timed run; every ratio is to
the peers measured in the same process. Per mode it records seconds per stage, seconds per step by
expert, DiT forwards counted by hooks, peak GPU memory and setup seconds (placement, LoRA fusing,
quantisation, compilation) apart from generation.

The released schedule is 40 steps for the A14B tasks and 50 for TI2V-5B; a measured run uses
``--steps`` (the plan and the router are those of the real schedule at that count; a distill
schedule keeps its own 4), and the JSON adds a labelled PROJECTION of the released end-to-end time:
measured text encoding and decode, plus each expert's measured stage extended by the released
plan's extra forwards at that expert's steady-state seconds per forward (its first step, which
carries one-time costs such as a model move, is left out of the rate).

``--loop_probe N`` times a forward of the high-noise expert out of the loop after each resident mode
without a cache, on the loop's own last inputs and on random ones, to tell the loop's overhead from
the inputs' effect on the GPU's clock (``loop_probe`` in the JSON).

The JSON is written after every mode, so a run cut short still leaves what it measured; modes past
``--budget_s`` are skipped with the reason.

    PYTHONUNBUFFERED=1 python3 scripts/bench_e2e.py --size '832*480' --steps 6 --out bench_480p.json
    python3 scripts/bench_e2e.py --task i2v-A14B --size '832*480' --steps 40 --modes peer,preset_fast --out i2v.json
    python3 scripts/bench_e2e.py --steps 40 --modes peer,peer_fewstep,preset_lightning_exact --out fewstep.json
    python scripts/bench_e2e.py --tiny --device cpu --dtype float32 --size 64*64 --frame_num 9 --out t.json
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python scripts/bench_e2e.py`

from benchmarks.end_to_end import TASKS, run  # noqa: E402
from benchmarks.modes import MODES  # noqa: E402
from benchmarks.report import print_table  # noqa: E402

PROMPT = "A red fox runs through fresh snow in a birch forest at sunrise, the camera tracking it from the side."


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--task", default="t2v-A14B", choices=TASKS)
    p.add_argument("--size", default=None, help="W*H (default: 832*480, or 1280*704 for ti2v-5B)")
    p.add_argument("--frame_num", type=int, default=None, help="default: the task's (81; 121 for ti2v-5B)")
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
    p.add_argument("--out", default="bench_e2e.json")
    p.add_argument("--layers", type=int, default=None, help="transformer blocks (default the release's; 2 with --tiny)")
    p.add_argument("--lora_rank", type=int, default=64, help="rank of the random distill LoRA pair (the releases': 64)")
    p.add_argument("--tiny", action="store_true", help="toy dims of every part for a CPU check")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--vae_dtype", default="float32", choices=["bfloat16", "float16", "float32"])
    p.add_argument(
        "--vae_tiling",
        action="store_true",
        help="every mode, the peers too, encodes and decodes in tiles (diffusers' enable_tiling): 720p on an "
        "80-GB GPU, where the pipelines' whole-video decode beside both experts does not fit",
    )
    p.add_argument("--init_std", type=float, default=0.02, help="std of the experts' random weight matrices")
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--matmul_n", type=int, default=None, help="matmul size for the peak (default 8192; 256 tiny)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget_s", type=float, default=480.0, help="skip modes that would end past this many seconds")
    return p


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = build_parser().parse_args(argv)
    if args.size is None:
        args.size = "1280*704" if args.task == "ti2v-5B" else "832*480"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    report = run(args, started)
    print_table(report)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
