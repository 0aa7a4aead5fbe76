"""Generate videos with Wan2.2 text-to-video (official CLI flags, plus half-frame and CFG truncation).

    python generate.py --prompt "a red square moving left"                      # t2v-tiny, shipped
    python generate.py --task t2v-A14B --ckpt_dir ./Wan2.2-T2V-A14B --prompt "..."   # the real model
    python generate.py --prompt_file prompts.jsonl --save_dir out/              # a batch (wan.batch)

Bad input exits with code 2 and a one-line error, a failed run (NaN/Inf, a write error) with 1; no
partial output is ever left behind. A batch exits with 0 when every item is complete, else with the
number of items that are not (failed, or not reached after a full disk), at most 125.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wan.config import DEFAULT_TASK, ConfigError, TaskConfig, available_tasks, load_task_config

if TYPE_CHECKING:
    from wan.lora import LoraFile
    from wan.text2video import GenerationSettings, WanT2V

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
    official.add_argument(
        "--task",
        default=DEFAULT_TASK,
        help=f"one of {', '.join(available_tasks())}, or the path of a task config .json",
    )
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
    lora_targets = {"lora": "both experts", "lora_high": "the high-noise expert", "lora_low": "the low-noise expert"}
    for flag, which in lora_targets.items():
        ours.add_argument(
            f"--{flag}",
            action="append",
            metavar="FILE[:SCALE]",
            help=f"a LoRA .safetensors fused into {which} at SCALE (default 1.0); repeat to stack",
        )
    ours.add_argument("--attention_backend", default=None, help="diffusers attention backend, e.g. _native_cudnn")
    ours.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    ours.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")

    batch = p.add_argument_group("batch (see README 'Batch generation')")
    batch.add_argument(
        "--prompt_file",
        default=None,
        help="one prompt per line, or JSON lines with per-item flags; loads the model once for all",
    )
    batch.add_argument(
        "--save_dir",
        default=None,
        help="output folder: a batch's videos and manifest.jsonl (default: outputs/<prompt file name>), "
        "or where a single video goes without --save_file",
    )
    return p


def generation_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's generation flags by CLI name: the defaults of every batch item."""
    from wan.batch import GENERATION_FLAGS

    return {name: getattr(args, name) for name in GENERATION_FLAGS}


def settings_from_args(args: argparse.Namespace, config: TaskConfig) -> GenerationSettings:
    """The generation settings the flags ask for, validated against the task."""
    from wan.batch import settings_from_flags

    seed = args.base_seed if args.base_seed >= 0 else random.randint(0, 2**31 - 1)
    return settings_from_flags(generation_flags(args), seed).resolved(config)


def default_save_file(config: TaskConfig, settings: GenerationSettings, save_dir: str | None) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", settings.prompt)[:50].strip("_") or "video"
    stamp = time.strftime("%Y%m%d_%H%M%S")
    return Path(save_dir or ".") / f"{config.task}_{settings.size.replace('*', 'x')}_{slug}_{stamp}.mp4"


def resolve_ckpt_dir(args: argparse.Namespace, config: TaskConfig) -> Path:
    """The checkpoint folder, checked to exist before anything is loaded or logged."""
    if args.ckpt_dir:
        path = Path(args.ckpt_dir)
    else:
        path = config.ckpt_dir()
        if path is None:
            raise ConfigError(f"task {config.task} needs --ckpt_dir (the folder with its checkpoint)")
    if not path.is_dir():
        raise ConfigError(f"checkpoint folder {path} does not exist; pass --ckpt_dir")
    return path


def check_single_process(args: argparse.Namespace) -> None:
    """Batch mode spreads whole items over the ranks; sharding one video is for single-video runs."""
    if args.ulysses_size > 1 or args.dit_fsdp or args.t5_fsdp:
        raise ConfigError(
            "--ulysses_size/--dit_fsdp/--t5_fsdp are for one video; a --prompt_file batch under torchrun "
            "gives each GPU whole items instead"
        )


def torchrun_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) in a plain process."""
    env = os.environ
    return int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0"))


def resolve_device(args: argparse.Namespace, local_rank: int = 0) -> None:
    """Fill --device and --offload_model; under torchrun each process takes the GPU of its local rank."""
    import torch

    if torch.cuda.is_available() and local_rank:
        torch.cuda.set_device(local_rank)  # "cuda" then means this rank's GPU
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.offload_model is None:
        args.offload_model = args.device != "cpu"


def load_pipeline(args: argparse.Namespace, config: TaskConfig, ckpt_dir: Path) -> tuple[WanT2V, float]:
    """The loaded model and the seconds it took."""
    from wan.text2video import WanT2V

    logger.info("loading %s from %s on %s", config.task, ckpt_dir, args.device)
    start = time.perf_counter()
    pipe = WanT2V.from_pretrained(
        config,
        ckpt_dir,
        device=args.device,
        convert_model_dtype=args.convert_model_dtype,
        offload_model=args.offload_model,
        t5_cpu=args.t5_cpu,
        attention_backend=args.attention_backend,
    )
    return pipe, time.perf_counter() - start


def sidecar_context(
    args: argparse.Namespace, config: TaskConfig, ckpt_dir: Path, loras: list[LoraFile] | None = None
) -> dict[str, Any]:
    """What the sidecar records besides the video's own settings and timings."""
    from wan.lora import lora_record

    return {
        "task": config.task,
        "ckpt_dir": str(ckpt_dir),
        "loras": lora_record(loras or []),
        "options": {
            "convert_model_dtype": args.convert_model_dtype,
            "offload_model": args.offload_model,
            "t5_cpu": args.t5_cpu,
            "attention_backend": args.attention_backend,
            "device": args.device,
        },
    }


def run(args: argparse.Namespace) -> int:
    """One video from --prompt: checks everything, then loads, generates and writes video + sidecar.

    Under torchrun (``--ulysses_size``, ``--dit_fsdp``, ``--t5_fsdp``) every rank loads and samples;
    rank 0 decodes and writes.
    """
    from wan import distributed
    from wan.batch import write_outputs
    from wan.lora import apply_loras, check_loras, lora_specs
    from wan.video import check_output_path

    config = load_task_config(args.task)
    settings = settings_from_args(args, config)
    ctx = distributed.init_distributed(args.device)
    try:
        distributed.validate(
            ctx,
            ulysses_size=args.ulysses_size,
            dit_fsdp=args.dit_fsdp,
            t5_fsdp=args.t5_fsdp,
            t5_cpu=args.t5_cpu,
            tokens=distributed.token_counts(config, settings),
        )
        settings.seed = distributed.broadcast_seed(settings.seed, ctx)
        save_file = check_output_path(args.save_file or default_save_file(config, settings, args.save_dir))
        ckpt_dir = resolve_ckpt_dir(args, config)
        loras = check_loras(lora_specs(vars(args)))
        resolve_device(args, ctx.local_rank)
        if ctx.world_size > 1:
            args.offload_model = True  # load to the CPU; parallelize() shards or places every part
        pipe, load_seconds = load_pipeline(args, config, ckpt_dir)
        start = time.perf_counter()
        apply_loras(pipe, loras)  # before parallelize: FSDP and Ulysses then see plain fused weights
        lora_seconds = time.perf_counter() - start
        distributed.parallelize(
            pipe, ctx, ulysses_size=args.ulysses_size, dit_fsdp=args.dit_fsdp, t5_fsdp=args.t5_fsdp, settings=settings
        )
        result = distributed.generate(pipe, settings, ctx, progress=not args.quiet)
        if distributed.is_main(ctx):
            fuse = {"lora_fuse": lora_seconds} if loras else {}
            result.timings = {"load": load_seconds, **fuse, **result.timings}
            write_outputs(result, save_file, config.fps, sidecar_context(args, config, ckpt_dir, loras))
            logger.info("saved %s (seed %d) in %.1f s", save_file, settings.seed, sum(result.timings.values()))
            print(save_file)
    finally:
        distributed.shutdown(ctx)
    return 0


def run_batch(args: argparse.Namespace) -> int:
    """Every item of --prompt_file on one loaded model (``wan.batch``); returns the batch's exit code.

    Batch-level input errors (no prompt file, unwritable --save_dir, bad flags) raise ``ConfigError``
    before the model loads; under torchrun each rank takes every world_size-th item.
    """
    from wan.batch import MANIFEST_NAME, BatchRunner, Manifest, check_writable_dir, plan_jobs, read_prompt_file, shard

    if args.prompt is not None:
        raise ConfigError("--prompt and --prompt_file exclude each other; put every prompt in the file")
    if args.save_file:
        raise ConfigError("--save_file names one video; with --prompt_file use --save_dir (and save_file per item)")
    config = load_task_config(args.task)
    check_single_process(args)
    prompt_file = Path(args.prompt_file)
    items = read_prompt_file(prompt_file)
    save_dir = check_writable_dir(Path(args.save_dir or Path("outputs") / prompt_file.stem), "--save_dir")
    manifest = Manifest(save_dir / MANIFEST_NAME)
    manifest.prepare()
    ckpt_dir = resolve_ckpt_dir(args, config)
    rank, world_size, local_rank = torchrun_rank()
    jobs = shard(plan_jobs(items, generation_flags(args), config, save_dir), rank, world_size)
    resolve_device(args, local_rank)
    context = {**sidecar_context(args, config, ckpt_dir), "prompt_file": str(prompt_file)}
    runner = BatchRunner(jobs, config, manifest, context, progress=not args.quiet and rank == 0)
    summary = runner.run(lambda: load_pipeline(args, config, ckpt_dir)[0])
    for path in summary.outputs:
        print(path)
    if summary.stop_error:
        print(
            f"error: {summary.stop_error}; batch stopped with {summary.not_reached} items not reached; "
            "finished items are kept: fix this and re-run the same command",
            file=sys.stderr,
        )
    return summary.exit_code


def silence_library_progress() -> None:
    """--quiet: also no weight-loading bars from diffusers and transformers."""
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    if args.quiet:
        silence_library_progress()
    from wan.checkpoints import CheckpointError
    from wan.text2video import NonFiniteLatentError

    try:
        return run_batch(args) if args.prompt_file else run(args)
    except (ConfigError, CheckpointError) as exc:  # bad input
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (NonFiniteLatentError, OSError) as exc:  # a run that failed (a batch records these per item)
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
