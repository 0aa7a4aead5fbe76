"""Calibrate step caching for a checkpoint: the most aggressive setting per expert that keeps the video.

For each expert in turn (high-noise first, then low-noise with the high-noise setting already
chosen), every candidate is tried on calibration prompts, and the one that skips the most while the
video stays at or above ``--min_psnr`` dB (mean over prompts, against the uncached video of the same
seed) is kept. The result goes to ``cache_calibration.json`` in the checkpoint folder, where
``--cache fbc`` or ``--cache sea`` (no threshold) finds it:

    python scripts/calibrate_cache.py                                    # t2v-tiny, on its training captions
    python scripts/calibrate_cache.py --task t2v-A14B --ckpt_dir CKPT --prompt_file prompts.txt --device cuda
    python scripts/calibrate_cache.py --method sea --max_run 3+5 ...     # SeaCache; then --preset fast --cache sea

Calibrate on prompts like the ones you will generate, but not on the prompts you evaluate with.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.metrics import compare_videos  # noqa: E402
from wan.config import (  # noqa: E402
    HIGH,
    LOW,
    load_task_config,  # noqa: E402
)
from wan.errors import ConfigError  # noqa: E402
from wan.levers.cache import (  # noqa: E402
    CALIBRATION_FILE,
    DEFAULT_SEA_RUN,
    MAX_SEA_RUN,
    ComputeCounter,
    cache_config,
    for_expert,
    parse_sea_run,
    sea_run_record,
)
from wan.settings import GenerationSettings  # noqa: E402
from wan.text2video import WanT2V  # noqa: E402
from wan.video import save_json, to_uint8_frames  # noqa: E402

logger = logging.getLogger("calibrate_cache")

CANDIDATES = {"fbc": "0.02,0.03,0.05,0.08", "taylorseer": "2,3,4", "sea": "0.25,0.5,0.75,1.0"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="t2v-tiny")
    p.add_argument("--ckpt_dir", default=None, help="default: the task's shipped checkpoint")
    p.add_argument("--method", default="fbc", choices=sorted(CANDIDATES))
    p.add_argument("--candidates", default=None, help="comma-separated settings to try (default: per method)")
    p.add_argument("--prompt_file", default=None, help="one prompt per line (t2v-tiny: its training captions)")
    p.add_argument("--prompts", type=int, default=6, help="how many calibration prompts")
    p.add_argument("--base_seed", type=int, default=1000, help="prompt i uses seed base_seed + i")
    p.add_argument("--min_psnr", type=float, default=34.0, help="mean PSNR (dB) each expert's setting must keep")
    p.add_argument(
        "--max_run",
        default=str(sea_run_record(DEFAULT_SEA_RUN)),
        help=f"sea: longest run of cached forwards (1-{MAX_SEA_RUN}), one for both experts or HIGH+LOW",
    )
    p.add_argument("--sample_steps", type=int, default=None)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--out", default=None, help=f"default: CKPT_DIR/{CALIBRATION_FILE}")
    return p.parse_args(argv)


def calibration_prompts(args: argparse.Namespace) -> list[str]:
    """The user's prompts, or for t2v-tiny training captions (the held-out ones stay for evaluation)."""
    if args.prompt_file:
        lines = Path(args.prompt_file).read_text(encoding="utf-8").splitlines()
        return [line.strip() for line in lines if line.strip()][: args.prompts]
    if args.task != "t2v-tiny":
        raise ConfigError("--prompt_file is needed for tasks other than t2v-tiny")
    from evaluation.tiny_world import sample_scene

    rng = random.Random(args.base_seed)
    return [sample_scene(rng, "train").caption.text for _ in range(args.prompts)]


def score(pipe: WanT2V, runs: list[GenerationSettings], baselines: list[np.ndarray]) -> tuple[float, float]:
    """(mean PSNR against the baselines, fraction of forwards whose blocks were skipped)."""
    counter = pipe.compute_counter
    before = sum(counter.snapshot().values())
    psnrs, forwards = [], 0
    for settings, baseline in zip(runs, baselines, strict=True):
        result = pipe.generate(settings, progress=False)
        forwards += sum(result.forwards.values())
        psnrs.append(min(compare_videos(to_uint8_frames(result.video), baseline)["psnr"], 100.0))
    computed = sum(counter.snapshot().values()) - before
    return float(np.mean(psnrs)), 1.0 - computed / forwards


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = load_task_config(args.task)
    ckpt_dir = Path(args.ckpt_dir or config.ckpt_dir() or "")
    if not ckpt_dir.is_dir():
        raise ConfigError(f"checkpoint folder {ckpt_dir} does not exist; pass --ckpt_dir")
    candidates = [float(c) for c in (args.candidates or CANDIDATES[args.method]).split(",")]
    sea_runs = parse_sea_run(args.max_run, f"--max_run {args.max_run}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = WanT2V.from_pretrained(config, ckpt_dir, device=device)
    pipe.compute_counter = ComputeCounter(pipe.experts)
    prompts = calibration_prompts(args)
    runs = [
        GenerationSettings(prompt=p, seed=args.base_seed + i, sample_steps=args.sample_steps)
        for i, p in enumerate(prompts)
    ]
    baselines = [to_uint8_frames(pipe.generate(r, progress=False).video) for r in runs]

    chosen: dict[str, float] = {}
    trials = []
    for expert_name in (HIGH, LOW):
        expert = pipe.experts[expert_name]
        best = None
        for value in candidates:
            expert.enable_cache(
                cache_config(args.method, value, max_run=for_expert(sea_runs, expert_name), expert=expert)
            )
            psnr, skipped = score(pipe, runs, baselines)
            expert.disable_cache()
            trials.append({"expert": expert_name, "value": value, "psnr": psnr, "skipped": skipped})
            logger.info(
                "%s %s=%g: %.2f dB, %.0f%% of forwards skipped", expert_name, args.method, value, psnr, 100 * skipped
            )
            if psnr >= args.min_psnr and (best is None or skipped > best[1]):
                best = (value, skipped)
        if best is None:
            raise ConfigError(
                f"no {args.method} setting keeps {args.min_psnr} dB for the {expert_name} expert; "
                "try smaller --candidates or a lower --min_psnr"
            )
        chosen[expert_name] = best[0]
        # The chosen setting stays on while the next expert's candidates are tried.
        expert.enable_cache(
            cache_config(args.method, best[0], max_run=for_expert(sea_runs, expert_name), expert=expert)
        )

    final_psnr, final_skipped = score(pipe, runs, baselines)
    out = Path(args.out) if args.out else ckpt_dir / CALIBRATION_FILE
    existing = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
    existing[args.method] = {**chosen, **({"max_run": sea_run_record(sea_runs)} if args.method == "sea" else {})}
    existing.setdefault("_measured", {})[args.method] = {
        "psnr": final_psnr,
        "skipped": final_skipped,
        "min_psnr": args.min_psnr,
        "prompts": len(prompts),
        "sample_steps": runs[0].sample_steps or config.sample_steps,
        "device": device,
        "trials": trials,
    }
    save_json(existing, out)
    logger.info(
        "%s: %s -> %.2f dB, %.0f%% skipped; wrote %s", args.method, chosen, final_psnr, 100 * final_skipped, out
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
