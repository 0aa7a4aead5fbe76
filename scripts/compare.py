"""Score accelerated modes against the baseline: same prompts, same seeds, same weights.

For each mode and prompt: MSE / PSNR / SSIM of the video against the baseline video, the number
of DiT forwards (and of those whose blocks ran, under a cache lever) and tokens processed (the
speed proxy that holds on any machine), seconds, and on the tiny-world tasks (``t2v-tiny``,
``i2v-tiny``) prompt adherence (``evaluation.adherence``) and motion amplitude against the baseline's
(``evaluation.motion``: mean ratio, and the motion error, mean |ratio - 1|). Writes ``report.json``,
prints a table, and writes a side-by-side PNG (one row per mode) and mp4 for the first prompt.

On ``i2v-tiny`` each prompt is a held-out scene's caption and its image the scene's first frame
(``evaluation.tiny_world.held_out_scenes``, as ``scripts/train_i2v_tiny.py`` evaluates), written to
``OUT_DIR/images/NNN.png`` and given to the engine as ``--image`` gives it; every mode also scores
frame 0 against that image (PSNR).

``--workers N`` runs N copies of this script (``--shard K/N``: prompts i with i % N == K, seeds still
base_seed + i) with logs and reports under ``OUT_DIR/shards/K``, devices round-robin from
``--devices``, then merges their reports in prompt order: the same report as one process, but for
seconds. Give each worker its own GPU or CPU cores: eight workers sharing one H100 were slower
in total than one process (docs/QUALITY.md).

    python scripts/compare.py --prompts 64                                    # t2v-tiny, held-out prompts
    python scripts/compare.py --task i2v-tiny --prompts 32 --modes baseline,preset_fast   # held-out scenes' images
    python scripts/compare.py --prompts 64 --workers 4 --devices cuda:0,cuda:1
    python scripts/compare.py --prompts 8 --modes baseline,half_default,half@4:22,half@8:26+stride2   # windows
    python scripts/compare.py --task t2v-A14B --ckpt_dir DIR --prompt_file prompts.txt --modes baseline,half_renoise
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.metrics import compare_videos, psnr  # noqa: E402
from evaluation.motion import summarise_motion  # noqa: E402
from wan.choices import (  # noqa: E402
    COMPLETIONS,  # noqa: E402
    PLAIN_HALF_FRAME_STEPS,
    POSITIONS,
)
from wan.config import TaskConfig, load_task_config  # noqa: E402
from wan.engine import Engine, build_engine  # noqa: E402
from wan.errors import (
    CheckpointError,  # noqa: E402
    ConfigError,  # noqa: E402
)
from wan.levers import Levers, parse_levers  # noqa: E402
from wan.levers.presets import preset_generation_defaults, resolve_levers  # noqa: E402
from wan.options import EngineOptions  # noqa: E402
from wan.plan import build_plan  # noqa: E402
from wan.settings import GenerationSettings  # noqa: E402
from wan.video import atomic_path, frame_grid, save_json, to_uint8_frames, write_mp4, write_png  # noqa: E402

logger = logging.getLogger("compare")

TINY_WORLD = ("t2v-tiny", "i2v-tiny")
"""Tasks trained on the tiny world: held-out prompts by default, and detectors for adherence and motion."""
PSNR_CAP = 100.0  # identical videos have infinite PSNR; JSON and means get this instead
CFG_TRUNCATION = {"cfg_truncate_steps": 5, "cfg_truncate_high_noise_steps": 3}
PLAIN = {"half_frame": True, "half_frame_steps": PLAIN_HALF_FRAME_STEPS}
MODES: dict[str, dict] = {
    "baseline": {},
    "half_default": {"half_frame": True},
    **{f"half_{m}": {**PLAIN, "frame_completion": m} for m in COMPLETIONS},
    "cfg_trunc": CFG_TRUNCATION,
    "half_repeat+cfg_trunc": {**PLAIN, "frame_completion": "repeat", **CFG_TRUNCATION},
    "half_renoise+cfg_trunc": {**PLAIN, "frame_completion": "renoise", **CFG_TRUNCATION},
}
"""Named modes; ``half_repeat`` is the seed's plain method (half frames up to the switch, repeat)."""
WINDOW_MODE = re.compile(r"half@(\d+:\d*)((?:\+[a-z_0-9]+)*)")
"""``half@START:END`` plus options ``+stride2``, ``+<completion>``, ``+cfg_trunc``: any window of the curve."""
TRUNCATION_MODE = re.compile(r"cfg_trunc@(\d+):(\d+)")
"""``cfg_trunc@N:M``: the last N steps and the last M high-noise steps cond-only (``cfg_trunc`` is 5:3)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="t2v-tiny")
    p.add_argument("--ckpt_dir", default=None, help="default: the task's shipped checkpoint")
    p.add_argument(
        "--prompt_file",
        default=None,
        help="one prompt per line (default on t2v-tiny and i2v-tiny: their held-out prompts)",
    )
    p.add_argument("--prompts", type=int, default=16, help="how many prompts to use")
    p.add_argument("--base_seed", type=int, default=0, help="prompt i uses seed base_seed + i in every mode")
    p.add_argument(
        "--scene_seed",
        type=int,
        default=None,
        help="i2v-tiny: draw the scenes from this seed, not the held-out ones (a tuning set apart from the check)",
    )
    p.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"comma-separated, from: {', '.join(MODES)}; or half@START:END[+stride2][+<completion>][+cfg_trunc]; "
        "or cfg_trunc@N:M (other truncation counts)",
    )
    p.add_argument("--size", default=None)
    p.add_argument("--frame_num", type=int, default=None)
    p.add_argument("--sample_steps", type=int, default=None)
    p.add_argument("--sample_solver", default=None)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--convert_model_dtype", action="store_true")
    p.add_argument("--out_dir", default="outputs/compare")
    p.add_argument("--workers", type=int, default=1, help="processes to spread the prompts over")
    p.add_argument("--devices", default=None, help="comma-separated, given to workers round-robin (default: --device)")
    p.add_argument("--shard", default=None, help="K/N: only prompts i with i %% N == K (set by --workers)")
    return p.parse_args(argv)


class ShardError(RuntimeError):
    """A worker process failed (one-line message naming its log, exit code 1)."""


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` -> (K, N); a worker keeps the global prompt indices, so seeds do not depend on N."""
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or int(match[1]) >= int(match[2]):
        raise ConfigError(f"--shard must be K/N with 0 <= K < N, got {text!r}")
    return int(match[1]), int(match[2])


def mode_fields(mode: str) -> dict:
    """GenerationSettings fields of a named mode or of ``half@START:END[+option...]``."""
    if mode in MODES:
        return MODES[mode]
    if truncation := TRUNCATION_MODE.fullmatch(mode):
        return {"cfg_truncate_steps": int(truncation[1]), "cfg_truncate_high_noise_steps": int(truncation[2])}
    match = WINDOW_MODE.fullmatch(mode)
    if not match:
        raise ConfigError(
            f"unknown mode {mode!r}; choose from: {', '.join(MODES)}, half@START:END[+option] or cfg_trunc@N:M"
        )
    fields: dict = {"half_frame": True, "half_frame_steps": match[1]}
    for option in filter(None, match[2].split("+")):
        if option in POSITIONS:
            fields["half_frame_positions"] = option
        elif option in COMPLETIONS:
            fields["frame_completion"] = option
        elif option == "cfg_trunc":
            fields.update(CFG_TRUNCATION)
        else:
            raise ConfigError(f"unknown option {option!r} in mode {mode!r}: {', '.join((*POSITIONS, *COMPLETIONS))}")
    return fields


def parse_modes(text: str) -> list[str]:
    """The requested modes, baseline first: every other mode is scored against it.

    A mode is a name from ``MODES`` or ``preset_<name>``, optionally with speed levers after ``~``,
    ``/``-separated: ``cfg_trunc~fp8/compile/cache=fbc:0.05/attention_backend=_native_cudnn``.
    """
    modes = [m.strip() for m in text.split(",") if m.strip()]
    for mode in modes:
        mode_settings(mode)  # unknown names and bad lever specs fail here, before anything loads
    return modes if "baseline" in modes else ["baseline", *modes]


def mode_settings(mode: str) -> tuple[dict, Levers]:
    """A mode's generation settings and levers (a preset's, resolved for this machine, or the ``~`` list)."""
    name, _, lever_text = mode.partition("~")
    if name.startswith("preset_"):
        preset = name.removeprefix("preset_")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        levers, _notes = resolve_levers(preset, parse_levers(lever_text), device)
        return preset_generation_defaults(preset), levers
    return mode_fields(name), replace(Levers(), **parse_levers(lever_text))


def worker_devices(args: argparse.Namespace) -> list[str]:
    """``--devices`` for workers to take round-robin; else the one ``--device`` (cuda where available)."""
    listed = [d.strip() for d in (args.devices or "").split(",") if d.strip()]
    return listed or [args.device or ("cuda" if torch.cuda.is_available() else "cpu")]


@dataclass(frozen=True)
class Prompt:
    """A prompt and, for an image-to-video task, its image (uint8 [H, W, 3]) that frame 0 should show."""

    text: str
    image: np.ndarray | None = None


def load_prompts(args: argparse.Namespace, config: TaskConfig) -> list[Prompt]:
    """``--prompt_file``'s lines, or the task's held-out prompts (i2v-tiny: held-out scenes with their images)."""
    if config.kind == "i2v" and (args.prompt_file or config.task != "i2v-tiny"):
        raise ConfigError(f"task {config.task} needs an image per prompt: compare.py has them for i2v-tiny only")
    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise ConfigError(f"prompt file {path} does not exist")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [Prompt(line) for line in lines[: args.prompts]]
    if config.task == "t2v-tiny":
        from evaluation.tiny_world import held_out_prompts

        return [Prompt(p.text) for p in held_out_prompts(args.prompts)]
    if config.task == "i2v-tiny":
        from evaluation.tiny_world import I2V_TINY_SEED, first_frames, held_out_scenes

        scenes = held_out_scenes(args.prompts, I2V_TINY_SEED if args.scene_seed is None else args.scene_seed)
        width, height = (int(v) for v in (args.size or config.default_size).split("*"))
        images = to_uint8_frames(first_frames(scenes, height, width).transpose(0, 1))
        return [Prompt(scene.text, image) for scene, image in zip(scenes, images, strict=True)]
    raise ConfigError(f"--prompt_file is needed for tasks other than {' and '.join(TINY_WORLD)}")


def summarise(values: list[float], worst) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "worst": float(worst(values))}


def motion_check(task: str, frames: np.ndarray, prompt: str, baseline_frames: np.ndarray) -> dict:
    """Motion amplitude against the baseline's where the task has a detector (the tiny world), else {}."""
    if task not in TINY_WORLD:
        return {}
    from evaluation.motion import motion_scores, video_amplitude

    return motion_scores(frames, prompt, video_amplitude(baseline_frames, prompt))


def adherence_check(task: str, video: torch.Tensor, prompt: str) -> bool | None:
    """Prompt adherence where the task has a detector (the tiny world), else None."""
    if task not in TINY_WORLD:
        return None
    from evaluation.adherence import check

    return check(video, prompt).matched


def image_check(frames: np.ndarray, image: np.ndarray | None, path: Path | None) -> dict:
    """The image the run started from (``path``) and frame 0's PSNR against it (capped): how well the image is
    kept; {} without one."""
    if image is None:
        return {}
    return {"image": str(path), "frame0_psnr": min(psnr(frames[:1], image[None]), PSNR_CAP)}


def labelled_rows(rows: dict[str, np.ndarray], frames_per_row: int = 8) -> np.ndarray:
    """One row of evenly spaced frames per mode, with the mode's name in a left margin."""
    from PIL import Image, ImageDraw

    strips = []
    for name, frames in rows.items():
        pick = np.linspace(0, len(frames) - 1, min(frames_per_row, len(frames))).round().astype(int)
        strip = frame_grid(frames[pick], columns=len(pick))
        label = Image.new("RGB", (150, strip.shape[0]), (255, 255, 255))
        ImageDraw.Draw(label).text((4, strip.shape[0] // 2 - 6), name, fill=(0, 0, 0))
        strips.append(np.concatenate([np.asarray(label), strip], axis=1))
    return np.concatenate(strips, axis=0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    modes = parse_modes(args.modes)
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    shard, shards = parse_shard(args.shard) if args.shard else (0, 1)
    config = load_task_config(args.task)
    prompts = load_prompts(args, config)
    ckpt_dir = args.ckpt_dir or config.ckpt_dir()
    if ckpt_dir is None:
        raise ConfigError(f"task {config.task} needs --ckpt_dir")
    if shard >= len(prompts):
        raise ConfigError(f"no prompts for shard {shard}/{shards} ({len(prompts)} prompts in all)")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    workers = min(args.workers, len(prompts))
    if args.shard is None and workers > 1:
        devices = worker_devices(args)
        reports = run_workers(argv, workers, devices, out_dir)
        device = ",".join(dict.fromkeys(devices[k % len(devices)] for k in range(workers)))
        report = build_report(args, config.task, str(ckpt_dir), device, modes, merge_videos(reports, modes))
        save_json(report, out_dir / "report.json")
        for name in ("side_by_side.png", "side_by_side.mp4"):  # shard 0 ran prompt 0
            if not (out_dir / "shards" / "0" / name).is_file():
                continue
            with atomic_path(out_dir / name) as tmp:
                shutil.copyfile(out_dir / "shards" / "0" / name, tmp)
    else:
        indices = range(shard, len(prompts), shards)
        report = run_prompts(args, config, str(ckpt_dir), worker_devices(args)[0], modes, prompts, indices, out_dir)
    print(format_table(report))
    logger.info("wrote %s", out_dir)
    return 0


def run_prompts(
    args: argparse.Namespace,
    config: TaskConfig,
    ckpt_dir: str,
    device: str,
    modes: list[str],
    prompts: list[Prompt],
    indices: range,
    out_dir: Path,
) -> dict:
    """Generate and score prompts[i] for i in ``indices`` (seed base_seed + i), in this process.

    A prompt's image is written to ``out_dir/images`` first: the engine reads it from a path, as ``--image``.
    """
    images = {i: out_dir / "images" / f"{i:03d}.png" for i in indices if prompts[i].image is not None}
    for i, path in images.items():
        write_png(prompts[i].image, path)

    def settings(i: int) -> GenerationSettings:
        return GenerationSettings(
            prompt=prompts[i].text,
            image=str(images[i]) if i in images else None,
            seed=args.base_seed + i,
            size=args.size,
            frame_num=args.frame_num,
            sample_steps=args.sample_steps,
            sample_solver=args.sample_solver,
        )

    engines: dict[Levers, Engine] = {}  # one engine per set of levers (they change the experts for good)
    for mode in modes:
        levers = mode_settings(mode)[1]
        if levers not in engines:
            options = EngineOptions(
                config=config,
                ckpt_dir=Path(ckpt_dir),
                device=device,
                placement="auto",
                convert_model_dtype=args.convert_model_dtype,
                t5_cpu=False,
                preset=None,
                levers=levers,
            )
            engines[levers] = build_engine(options, [build_plan(settings(i), config) for i in indices])
    results: dict[str, list[dict]] = {m: [] for m in modes}
    first_videos: dict[str, np.ndarray] = {}
    for i in indices:
        prompt = prompts[i].text
        base = settings(i)
        baseline_frames = None
        for mode in modes:
            start = time.perf_counter()
            fields_, levers = mode_settings(mode)
            result = engines[levers].generate(replace(base, **fields_), progress=False)
            seconds = time.perf_counter() - start
            frames = to_uint8_frames(result.video)
            baseline_frames = frames if mode == "baseline" else baseline_frames
            scores = compare_videos(frames, baseline_frames)
            scores["psnr"] = min(scores["psnr"], PSNR_CAP)
            results[mode].append(
                {
                    "prompt": prompt,
                    "seed": base.seed,
                    **scores,
                    "forwards": sum(result.forwards.values()),
                    # without a cache every forward ran
                    "computed": sum((result.computed_forwards or result.forwards).values()),
                    "tokens": sum(result.tokens.values()),
                    "seconds": seconds,
                    "adherent": adherence_check(config.task, result.video, prompt),
                    **image_check(frames, prompts[i].image, images.get(i)),
                    "half_frame_steps": result.settings.half_frame_steps,
                    **motion_check(config.task, frames, prompt, baseline_frames),
                }
            )
            if i == 0:
                first_videos[mode] = frames
        logger.info("prompt %d/%d done: %s", i + 1, len(prompts), prompt)
        # Rewritten after every prompt: a run cut short still leaves a report of what it finished.
        report = build_report(args, config.task, ckpt_dir, device, modes, results)
        save_json(report, out_dir / "report.json")

    if first_videos:  # the process that ran prompt 0
        write_png(labelled_rows(first_videos), out_dir / "side_by_side.png")
        try:
            write_mp4(np.concatenate(list(first_videos.values()), axis=2), out_dir / "side_by_side.mp4", config.fps)
        except ImportError:  # a GPU box without ffmpeg still gets the report and the PNG
            logger.warning("imageio-ffmpeg is not installed: side_by_side.mp4 skipped (pip install imageio-ffmpeg)")
    return report


def run_workers(argv: list[str], workers: int, devices: list[str], out_dir: Path) -> list[dict]:
    """Run shard K of ``workers`` as ``compare.py ARGV --shard K/N`` and return the shards' reports.

    Waits for every shard even when one fails, so the others still leave their reports.
    """
    threads = max(1, (os.cpu_count() or 1) // workers)  # CPU workers share the cores instead of oversubscribing
    procs: list[subprocess.Popen] = []
    try:
        for k in range(workers):
            shard_dir = out_dir / "shards" / str(k)
            shard_dir.mkdir(parents=True, exist_ok=True)
            device = devices[k % len(devices)]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if torch.device(device).type == "cpu" else None
            command = [sys.executable, str(Path(__file__).resolve()), *argv]
            command += ["--shard", f"{k}/{workers}", "--devices", device, "--out_dir", str(shard_dir)]
            with open(shard_dir / "log.txt", "w", encoding="utf-8") as log:
                procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
            logger.info("shard %d/%d on %s: log in %s", k, workers, device, shard_dir / "log.txt")
        codes = [proc.wait() for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    failed = [k for k, code in enumerate(codes) if code != 0]
    if failed:
        k = failed[0]
        more = f" ({len(failed) - 1} more shards failed)" if len(failed) > 1 else ""
        log = out_dir / "shards" / str(k) / "log.txt"
        raise ShardError(f"shard {k}/{workers} exited with code {codes[k]}; see {log}{more}")
    return [json.loads((out_dir / "shards" / str(k) / "report.json").read_text()) for k in range(workers)]


def merge_videos(reports: list[dict], modes: list[str]) -> dict[str, list[dict]]:
    """Per mode, the shards' video rows in global prompt order: shard K's j-th row is prompt K + j * N."""
    n = len(reports)
    total = sum(r["prompts"] for r in reports)
    return {mode: [reports[i % n]["modes"][mode]["videos"][i // n] for i in range(total)] for mode in modes}


def settings_of(mode: str, rows: list[dict]) -> dict:
    """The mode's fields, with the half-frame window it resolved to (``half_default`` names none)."""
    window = rows[0].get("half_frame_steps") if rows else None
    return {**mode_settings(mode)[0], **({"half_frame_steps": window} if window else {})}


def build_report(args, task: str, ckpt_dir: str, device: str, modes: list[str], results: dict) -> dict:
    base_tokens = np.mean([r["tokens"] for r in results["baseline"]])
    base_forwards = np.mean([r["forwards"] for r in results["baseline"]])
    summary = {}
    for mode in modes:
        rows = results[mode]
        adherent = [r["adherent"] for r in rows if r["adherent"] is not None]
        frame0 = [r["frame0_psnr"] for r in rows if "frame0_psnr" in r]
        summary[mode] = {
            "settings": settings_of(mode, rows),
            "levers": mode_settings(mode)[1].as_dict(),
            "mse": summarise([r["mse"] for r in rows], max),
            "psnr": summarise([r["psnr"] for r in rows], min),
            "ssim": summarise([r["ssim"] for r in rows], min),
            "forwards": float(np.mean([r["forwards"] for r in rows])),
            "forwards_vs_baseline": float(np.mean([r["forwards"] for r in rows]) / base_forwards),
            "computed": float(np.mean([r.get("computed", r["forwards"]) for r in rows])),
            "tokens": float(np.mean([r["tokens"] for r in rows])),
            "tokens_vs_baseline": float(np.mean([r["tokens"] for r in rows]) / base_tokens),
            "seconds": float(np.mean([r["seconds"] for r in rows])),
            "adherence": float(np.mean(adherent)) if adherent else None,
            "frame0_psnr": summarise(frame0, min) if frame0 else None,
            **summarise_motion(rows),
            "videos": rows,
        }
    return {
        "command": "python scripts/compare.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "task": task,
        "ckpt_dir": ckpt_dir,
        "device": device,
        "prompts": len(results["baseline"]),
        "psnr_cap": PSNR_CAP,
        "modes": summary,
    }


def format_table(report: dict) -> str:
    head = (
        f"{'mode':<24} {'MSE mean':>9} {'PSNR mean':>9} {'PSNR min':>8} {'SSIM mean':>9} {'SSIM min':>8} "
        f"{'fwd':>6} {'comp':>6} {'tokens':>7} {'sec':>6} {'adher.':>6} {'motion':>6} {'m.err':>6} {'f0 PSNR':>7}"
    )
    lines = [head, "-" * len(head)]
    for mode, m in report["modes"].items():
        adherence = "-" if m["adherence"] is None else f"{m['adherence']:.0%}"
        motion = "-" if m.get("amplitude_vs_baseline") is None else f"{m['amplitude_vs_baseline']:.2f}"
        error = "-" if m.get("motion_error") is None else f"{m['motion_error']:.2f}"
        frame0 = "-" if m.get("frame0_psnr") is None else f"{m['frame0_psnr']['mean']:.2f}"
        lines.append(
            f"{mode:<24} {m['mse']['mean']:>9.5f} {m['psnr']['mean']:>9.2f} {m['psnr']['worst']:>8.2f} "
            f"{m['ssim']['mean']:>9.4f} {m['ssim']['worst']:>8.4f} {m['forwards']:>6.1f} {m['computed']:>6.1f} "
            f"{m['tokens_vs_baseline']:>6.2f}x {m['seconds']:>6.2f} {adherence:>6} {motion:>6} {error:>6} {frame0:>7}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ConfigError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except ShardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
