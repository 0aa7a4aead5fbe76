"""Generate a video with Wan2.2 text-to-video (official CLI flags, plus half-frame and CFG truncation).

    python generate.py --prompt "a red square moving left"                      # t2v-tiny, shipped
    python generate.py --task t2v-A14B --ckpt_dir ./Wan2.2-T2V-A14B --prompt "..."   # the real model

Bad input exits with code 2 and a one-line error; no partial output is ever left behind.
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path

from wan.config import DEFAULT_TASK, ConfigError, TaskConfig, available_tasks, load_task_config

logger = logging.getLogger("generate")


def str2bool(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Wan2.2 text-to-video generation", allow_abbrev=False)
    official = p.add_argument_group("official Wan2.2 flags")
    official.add_argument("--task", default=DEFAULT_TASK, help=f"one of {', '.join(available_tasks())}")
    official.add_argument("--size", default=None, help="W*H, e.g. 1280*720 (default: the task's)")
    official.add_argument("--frame_num", type=int, default=None, help="pixel frames, 4n+1 (default: the task's)")
    official.add_argument("--ckpt_dir", default=None, help="checkpoint folder, official or diffusers layout")
    official.add_argument(
        "--offload_model",
        type=str2bool,
        default=None,
        help="move models to the CPU when idle (default: true on one GPU, false otherwise)",
    )
    official.add_argument("--ulysses_size", type=int, default=1, help="Ulysses sequence-parallel degree (torchrun)")
    official.add_argument("--t5_fsdp", action="store_true", help="shard the text encoder with FSDP")
    official.add_argument("--t5_cpu", action="store_true", help="keep the text encoder on the CPU")
    official.add_argument("--dit_fsdp", action="store_true", help="shard the experts with FSDP")
    official.add_argument("--save_file", default=None, help="output .mp4 (or .png frame grid)")
    official.add_argument("--prompt", default=None, help="the text prompt")
    official.add_argument("--base_seed", type=int, default=-1, help="seed; -1 draws one")
    official.add_argument("--sample_solver", default=None, choices=["unipc", "dpm++", "euler"])
    official.add_argument("--sample_steps", type=int, default=None)
    official.add_argument("--sample_shift", type=float, default=None)
    official.add_argument(
        "--sample_guide_scale",
        type=float,
        default=None,
        help="one CFG scale for both experts (default: 4.0 high-noise, 3.0 low-noise)",
    )
    official.add_argument("--convert_model_dtype", action="store_true", help="convert the experts to bf16")

    ours = p.add_argument_group("acceleration and extras")
    ours.add_argument("--negative_prompt", default=None, help="default: the task's (the released one for A14B)")
    ours.add_argument(
        "--enable_half_frame_generation",
        action="store_true",
        help="high-noise expert on ceil(T/2) latent frames, completed to T at the expert switch",
    )
    ours.add_argument(
        "--frame_completion",
        default=None,
        choices=["repeat", "interpolate", "renoise", "renoise_fresh"],
        help="how the half-frame latent is completed at the switch (default: renoise)",
    )
    ours.add_argument(
        "--enable_improved_frame_completion",
        action="store_true",
        help="use the measured-best completion (renoise) instead of --frame_completion",
    )
    ours.add_argument("--cfg_truncate_steps", type=int, default=0, help="last N steps run the conditional pass only")
    ours.add_argument(
        "--cfg_truncate_high_noise_steps",
        type=int,
        default=0,
        help="last M high-noise steps before the switch run the conditional pass only",
    )
    ours.add_argument("--attention_backend", default=None, help="diffusers attention backend, e.g. _native_cudnn")
    ours.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    ours.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    return p


def settings_from_args(args: argparse.Namespace, config: TaskConfig):
    """The generation settings the flags ask for, validated against the task."""
    from wan.text2video import DEFAULT_COMPLETION, IMPROVED_COMPLETION, GenerationSettings

    if args.enable_improved_frame_completion:
        completion = IMPROVED_COMPLETION
    else:
        completion = args.frame_completion or DEFAULT_COMPLETION
    seed = args.base_seed if args.base_seed >= 0 else random.randint(0, 2**31 - 1)
    guide = args.sample_guide_scale
    settings = GenerationSettings(
        prompt=args.prompt or "",
        negative_prompt=args.negative_prompt,
        size=args.size,
        frame_num=args.frame_num,
        seed=seed,
        sample_solver=args.sample_solver,
        sample_steps=args.sample_steps,
        sample_shift=args.sample_shift,
        guide_scale_high=guide,
        guide_scale_low=guide,
        half_frame=args.enable_half_frame_generation,
        frame_completion=completion,
        cfg_truncate_steps=args.cfg_truncate_steps,
        cfg_truncate_high_noise_steps=args.cfg_truncate_high_noise_steps,
    )
    return settings.resolved(config)


def default_save_file(config: TaskConfig, settings) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", settings.prompt)[:50].strip("_") or "video"
    stamp = time.strftime("%Y%m%d_%H%M%S")
    return Path(f"{config.task}_{settings.size.replace('*', 'x')}_{slug}_{stamp}.mp4")


def resolve_ckpt_dir(args: argparse.Namespace, config: TaskConfig) -> Path:
    if args.ckpt_dir:
        return Path(args.ckpt_dir)
    shipped = config.ckpt_dir()
    if shipped is None:
        raise ConfigError(f"task {config.task} needs --ckpt_dir (the folder with its checkpoint)")
    return shipped


def sidecar_path(video_path: Path) -> Path:
    return video_path.with_suffix(".json")


def sidecar(config: TaskConfig, ckpt_dir: Path, result, video_path: Path, args: argparse.Namespace) -> dict:
    """Everything needed to reproduce and account for a video."""
    return {
        "task": config.task,
        "ckpt_dir": str(ckpt_dir),
        "save_file": str(video_path),
        "settings": asdict(result.settings),
        "options": {
            "convert_model_dtype": args.convert_model_dtype,
            "offload_model": args.offload_model,
            "t5_cpu": args.t5_cpu,
            "attention_backend": args.attention_backend,
            "device": args.device,
        },
        "steps": {"high_noise": result.high_noise_steps, "low_noise": result.low_noise_steps},
        "forwards": result.forwards,
        "tokens": result.tokens,
        "seconds": {k: round(v, 4) for k, v in result.timings.items()},
    }


def run(args: argparse.Namespace) -> int:
    import torch

    from wan.text2video import WanT2V
    from wan.video import check_output_path, save_json, save_video

    config = load_task_config(args.task)
    settings = settings_from_args(args, config)
    if args.ulysses_size > 1 or args.dit_fsdp or args.t5_fsdp:
        raise ConfigError("multi-GPU flags need torchrun; see README 'Multi-GPU'")
    save_file = check_output_path(args.save_file or default_save_file(config, settings))
    ckpt_dir = resolve_ckpt_dir(args, config)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.device = device
    if args.offload_model is None:
        args.offload_model = device != "cpu"
    logger.info("loading %s from %s on %s", config.task, ckpt_dir, device)
    start = time.perf_counter()
    pipe = WanT2V.from_pretrained(
        config,
        ckpt_dir,
        device=device,
        convert_model_dtype=args.convert_model_dtype,
        offload_model=args.offload_model,
        t5_cpu=args.t5_cpu,
        attention_backend=args.attention_backend,
    )
    load_seconds = time.perf_counter() - start
    result = pipe.generate(settings, progress=not args.quiet)
    result.timings = {"load": load_seconds, **result.timings}
    save_video(result.video, save_file, config.fps)
    save_json(sidecar(config, ckpt_dir, result, save_file, args), sidecar_path(save_file))
    logger.info("saved %s (seed %d) in %.1f s", save_file, settings.seed, sum(result.timings.values()))
    print(save_file)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    from wan.checkpoints import CheckpointError

    try:
        return run(args)
    except (ConfigError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
