"""Generate videos with Wan2.2 text-to-video (official CLI flags, plus half-frame and CFG truncation).

    python generate.py --prompt "a red square moving left"                      # t2v-tiny, shipped
    python generate.py --task t2v-A14B --ckpt_dir ./Wan2.2-T2V-A14B --prompt "..."   # the real model
    python generate.py --prompt_file prompts.jsonl --save_dir out/              # a batch (wan.batch)

Every flag is checked (``wan.validation``) before anything loads. Bad input exits with code 2 and a
one-line error; a failed run (NaN/Inf, out of memory, a write error) with 1; an internal error with 1
and one line naming the file that holds its trace (``--debug`` shows it instead); SIGINT with 130 and
SIGTERM with 143. No partial output is ever left behind. A batch exits with 0 when every item is
complete, else with the number of items that are not (failed, or not reached after a full disk), at
most 125.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sys
import tempfile
import traceback
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from wan.choices import COMPLETIONS, PLACEMENTS, POSITIONS, SOLVERS
from wan.config import DEFAULT_TASK, TaskConfig, available_tasks, load_task_config
from wan.errors import BAD_INPUT, ConfigError, DistributedRunError, NonFiniteLatentError, one_line
from wan.levers import add_lever_flags
from wan.options import with_defaults
from wan.settings import require_image, settings_from_flags
from wan.validation import check_flags

if TYPE_CHECKING:
    from wan.batch import BatchSummary

logger = logging.getLogger("generate")


def str2bool(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised where the program is so every ``finally`` (temporary files, claims) runs;
    not an ``Exception``, so no per-item handler of a batch swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def signals_raise() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into ``Interrupted``; a second signal during the cleanup is ignored."""

    def handler(signum: int, frame: Any) -> NoReturn:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line (``error: ...``), exit code 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (--help lists the flags)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description="Wan2.2 video generation: text-to-video, image-to-video, TI2V", allow_abbrev=False)
    add_official_flags(p)
    add_extra_flags(p)
    speed = p.add_argument_group("speed levers (docs/PERFORMANCE.md); explicit flags win over --preset")
    add_lever_flags(speed)
    add_batch_flags(p)
    return p


def add_official_flags(p: argparse.ArgumentParser) -> None:
    """The flags of the official Wan2.2 generate.py, with its defaults."""
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
        help="true: move whole models to the CPU when idle; false: keep everything on the GPU "
        "(default: --placement auto)",
    )
    official.add_argument("--ulysses_size", type=int, default=1, help="Ulysses sequence-parallel degree (torchrun)")
    official.add_argument("--t5_fsdp", action="store_true", help="shard the text encoder with FSDP")
    official.add_argument("--t5_cpu", action="store_true", help="keep the text encoder on the CPU")
    official.add_argument("--dit_fsdp", action="store_true", help="shard the experts with FSDP")
    official.add_argument("--save_file", default=None, help="output .mp4 (or .png frame grid)")
    official.add_argument("--prompt", default=None, help="the text prompt")
    official.add_argument(
        "--image",
        default=None,
        help="the first frame of an image-to-video task (i2v-A14B: required; ti2v-5B: optional); its aspect ratio "
        "sets the video's shape, --size its area",
    )
    official.add_argument("--base_seed", type=int, default=-1, help="seed; -1 draws one")
    official.add_argument("--sample_solver", default=None, choices=list(SOLVERS))
    official.add_argument("--sample_steps", type=int, default=None)
    official.add_argument("--sample_shift", type=float, default=None)
    official.add_argument(
        "--sample_guide_scale",
        type=float,
        default=None,
        help="one CFG scale for both experts (default: 4.0 high-noise, 3.0 low-noise)",
    )
    official.add_argument(
        "--convert_model_dtype",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="convert the experts to bf16 (a --preset turns it on)",
    )


def add_extra_flags(p: argparse.ArgumentParser) -> None:
    """What the official CLI lacks: half-frame generation, CFG truncation, placement, CFG parallel, the distill
    pair's folder, the device and logging."""
    ours = p.add_argument_group("acceleration and extras")
    ours.add_argument("--negative_prompt", default=None, help="default: the task's (the released one for A14B)")
    ours.add_argument(
        "--enable_half_frame_generation",
        action="store_true",
        help="every high-noise step on ceil(T/2) latent frames, completed to the full count at the expert switch "
        "(A14B tasks; narrower windows: --half_frame_steps; docs/HALF_FRAME.md)",
    )
    ours.add_argument(
        "--half_frame_steps",
        default=None,
        metavar="START:END",
        help="only steps START..END-1 (0-based, within the high-noise phase) run at half frames, a measured "
        "trade-off of speed for fidelity; START: runs to the expert switch (default with the flag: 0:)",
    )
    ours.add_argument(
        "--half_frame_positions",
        default="contiguous",
        choices=list(POSITIONS),
        help="temporal RoPE positions of the half frames: 0,1,2,... (default) or 0,2,4,...",
    )
    ours.add_argument(
        "--frame_completion",
        default=None,
        choices=list(COMPLETIONS),
        help="how the half-frame latent is completed back to full frames (default: renoise; repeat is the "
        "source documents' F1,F1,F2,F2,...)",
    )
    ours.add_argument(
        "--enable_improved_frame_completion",
        action="store_true",
        help="the source documents' flag, accepted as an alias: selects the best measured completion, renoise, "
        "which is already the default (it overrides --frame_completion)",
    )
    ours.add_argument(
        "--cfg_truncate_steps", type=int, default=None, help="last N steps run the conditional pass only (default 0)"
    )
    ours.add_argument(
        "--cfg_truncate_high_noise_steps",
        type=int,
        default=None,
        help="last M high-noise steps before the switch run the conditional pass only (default 0)",
    )
    ours.add_argument(
        "--placement",
        default=None,
        choices=list(PLACEMENTS),
        help="where the parts live: auto (the fastest that fits; the default), resident (everything on the GPU), "
        "resident_lean (the text encoder visits the GPU only to encode), offload (= --offload_model True), "
        "stream (experts streamed block by block)",
    )
    ours.add_argument(
        "--cfg_parallel",
        action="store_true",
        help="torchrun: cond and uncond passes at once on two halves of the GPUs (needs --ulysses_size N/2)",
    )
    ours.add_argument(
        "--dist_timeout_s",
        type=float,
        default=None,
        help="torchrun: seconds any collective may wait before the run ends with an error (default 300)",
    )
    lora_targets = {"lora": "both experts", "lora_high": "the high-noise expert", "lora_low": "the low-noise expert"}
    for flag, which in lora_targets.items():
        ours.add_argument(
            f"--{flag}",
            action="append",
            metavar="FILE[:SCALE]",
            help=f"a LoRA .safetensors fused into {which} at SCALE (default 1.0); repeat to stack",
        )
    ours.add_argument(
        "--lora_dir",
        default=None,
        metavar="DIR[:SCALE]",
        help="a step-distill LoRA pair's folder (Wan2.2-Lightning, LightX2V): the file named high on the "
        "high-noise expert, the one named low on the low-noise expert",
    )
    ours.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    ours.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    ours.add_argument("--debug", action="store_true", help="an internal error prints its full trace")


def add_batch_flags(p: argparse.ArgumentParser) -> None:
    """A prompt file run once per loaded model, on this machine or on Ray workers."""
    batch = p.add_argument_group("batch (docs/BATCH.md)")
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
    batch.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="run the batch on Ray workers (docs/RAY.md): local (start Ray on this machine), auto, HOST:PORT or "
        "ray://HOST:10001 (join a cluster); the videos and manifest are written here, on the driver",
    )
    batch.add_argument(
        "--ray_workers", type=int, default=None, help="Ray workers (default: one per GPU; CPU workers need it)"
    )
    batch.add_argument("--ray_gpus_per_worker", type=int, default=1, help="GPUs per Ray worker (1; docs/RAY.md)")


def generation_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The generation flags by CLI name: the defaults of every batch item."""
    from wan.batch import GENERATION_FLAGS

    return {name: flags.get(name) for name in GENERATION_FLAGS}


def check_single_process(flags: Mapping[str, Any]) -> None:
    """Batch mode spreads whole items over the ranks; sharding one video is for single-video runs."""
    from wan.options import parallel_options

    if parallel_options(flags).shards_one_video:
        raise ConfigError(
            "--ulysses_size/--cfg_parallel/--dit_fsdp/--t5_fsdp are for one video; a --prompt_file batch under "
            "torchrun gives each GPU whole items instead"
        )


def checked_flags(args: argparse.Namespace) -> tuple[dict[str, Any], TaskConfig]:
    """The command line with --preset's defaults filled in, every flag checked against the task: torch-free,
    so bad input fails in milliseconds."""
    flags = with_defaults(vars(args))
    config = load_task_config(flags["task"])
    check_flags(flags, config)
    return flags, config


def run(args: argparse.Namespace) -> int:
    """One video from --prompt: checks everything, then loads, generates and writes video + sidecar.

    Under torchrun (``--ulysses_size``, ``--cfg_parallel``, ``--dit_fsdp``, ``--t5_fsdp``) every rank loads
    and samples; rank 0 decodes and writes. A failed rank aborts its process groups; the others' collectives
    end within ``--dist_timeout_s``.
    """
    if args.ray is not None:
        raise ConfigError("--ray runs a batch: give --prompt_file (one prompt per line) and --save_dir")
    flags, config = checked_flags(args)
    seed = flags["base_seed"] if flags["base_seed"] >= 0 else random.randint(0, 2**31 - 1)
    settings = settings_from_flags(flags, seed).resolved(config)
    require_image(settings, config)

    from wan import distributed
    from wan.engine import build_engine
    from wan.options import parallel_options, resolve_options
    from wan.outputs import default_video_path, write_outputs
    from wan.paths import claim_output
    from wan.plan import build_plan

    parallel = parallel_options(flags)
    ctx = distributed.init_distributed(flags.get("device"), timeout_s=parallel.dist_timeout_s)
    with ExitStack() as stack:
        stack.enter_context(distributed.session(ctx))
        settings.seed = distributed.broadcast_seed(settings.seed, ctx)
        plan = build_plan(settings, config)
        save_file = Path(args.save_file or default_video_path(config.task, plan, args.save_dir))
        distributed.validate(
            ctx,
            ulysses_size=parallel.ulysses_size,
            cfg_parallel=parallel.cfg_parallel,
            dit_fsdp=parallel.dit_fsdp,
            t5_fsdp=parallel.t5_fsdp,
            t5_cpu=bool(flags.get("t5_cpu")),
            tokens=plan.sequence_lengths,
        )
        options = resolve_options(flags, local_rank=ctx.local_rank)
        if distributed.is_main(ctx) and not stack.enter_context(claim_output(save_file)):
            raise ConfigError(f"--save_file {save_file}: another run is writing it now; choose another name")
        engine = build_engine(options, [plan], ctx)
        result = engine.generate(plan, progress=not args.quiet)
        if engine.is_main:
            result.timings = {**engine.load_timings, **result.timings}
            write_outputs(result, save_file, config.fps, engine.sidecar_context())
            logger.info("saved %s (seed %d) in %.1f s", save_file, plan.settings.seed, sum(result.timings.values()))
            print(save_file)
    return 0


def run_batch(args: argparse.Namespace) -> int:
    """Every item of --prompt_file on one loaded model (``wan.batch``); returns the batch's exit code.

    Batch-level input errors (no prompt file, unwritable --save_dir, bad flags) raise ``ConfigError``
    before the model loads; under torchrun each rank takes every world_size-th item.
    """
    if args.prompt is not None:
        raise ConfigError("--prompt and --prompt_file exclude each other; put every prompt in the file")
    if args.save_file is not None:
        raise ConfigError("--save_file names one video; with --prompt_file use --save_dir (and save_file per item)")
    flags, config = checked_flags(args)  # once, before any item: a bad flag is one line, not one per item
    check_single_process(flags)

    from wan.batch import MANIFEST_NAME, BatchRunner, Manifest, plan_jobs, read_prompt_file, shard
    from wan.engine import build_engine, sidecar_context
    from wan.options import resolve_options, torchrun_rank
    from wan.outputs import check_writable_dir
    from wan.plan import build_plan

    prompt_file = Path(args.prompt_file)
    items = read_prompt_file(prompt_file)
    save_dir = check_writable_dir(Path(args.save_dir or Path("outputs") / prompt_file.stem), "--save_dir")
    manifest = Manifest(save_dir / MANIFEST_NAME)
    manifest.prepare()
    if args.ray is not None:  # the workers resolve the device and load; the driver writes and records
        from wan.batch.manifest import BatchRecorder
        from wan.batch.ray import run_ray

        jobs = plan_jobs(items, generation_flags(flags), config, save_dir)
        return report_batch(run_ray(jobs, BatchRecorder(manifest, config), flags, prompt_file, progress=not args.quiet))
    rank, world_size, local_rank = torchrun_rank()
    options = resolve_options(flags, local_rank=local_rank)
    jobs = shard(plan_jobs(items, generation_flags(flags), config, save_dir), rank, world_size)
    context = {**sidecar_context(options), "prompt_file": str(prompt_file)}
    runner = BatchRunner(jobs, config, manifest, context, progress=not args.quiet and rank == 0)
    runs = []
    for job in jobs:
        with suppress(ConfigError):  # an item whose schedule is refused fails alone, in the runner
            runs.append(build_plan(job.settings, config)) if job.settings else None
    summary = runner.run(lambda loras: build_engine(replace(options, loras=tuple(loras)), runs).pipe)
    return report_batch(summary)


def report_batch(summary: BatchSummary) -> int:
    """Print the complete videos (and why the batch stopped, if it did); the batch's exit code."""
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


def out_of_memory(exc: BaseException) -> bool:
    """A CUDA out-of-memory error (a failed run, not an internal error); torch is not imported to ask."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)


def write_trace() -> Path:
    """The current exception's full trace, in a file the one-line error can point to."""
    with tempfile.NamedTemporaryFile("w", prefix="wan-generate-", suffix=".log", delete=False) as handle:
        handle.write(traceback.format_exc())
    return Path(handle.name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    if args.quiet:
        silence_library_progress()
    with signals_raise():
        try:
            return run_reporting_errors(args)
        except Interrupted as stop:  # here too if it comes while an error is being reported
            resume = "; re-run the same command to resume" if args.prompt_file is not None else ""
            print(f"error: stopped by {stop}; no partial file is left{resume}", file=sys.stderr)
            return 128 + stop.signum


def run_reporting_errors(args: argparse.Namespace) -> int:
    """The run's exit code; every error becomes one line on stderr (a traceback only with --debug)."""
    try:
        return run_batch(args) if args.prompt_file is not None else run(args)
    except BAD_INPUT as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (NonFiniteLatentError, OSError, DistributedRunError) as exc:  # a failed run
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if out_of_memory(exc):
            print(f"error: {one_line(exc)}", file=sys.stderr)
            return 1
        if args.debug:
            raise
        trace = write_trace()
        print(f"error: internal error ({one_line(exc)}); full trace in {trace} (--debug prints it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
