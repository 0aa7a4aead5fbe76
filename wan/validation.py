"""Every setting checked in one table before anything loads: one line naming the flag, the value and what is allowed.

``RULES`` maps a flag (its argparse dest, which is also a batch item's key) to a check; a new flag's
check is one entry. ``check_flags`` runs the table over the command line once, before any model or
batch item; ``wan.settings`` runs it again over each video's resolved settings (every batch item too)
and adds the checks that need several settings at once. Bad input never reaches the model, so it
fails in milliseconds with exit code 2 instead of a traceback after loading.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from wan.choices import COMPLETIONS, POSITIONS, SOLVERS
from wan.config import TaskConfig
from wan.errors import ConfigError
from wan.paths import VIDEO_SUFFIXES, writable_target_problem
from wan.prompt import clean_prompt

SEED_MAX = 2**32 - 1
"""Seeds are 32-bit, as in the official release, so every recorded seed can be passed back as --base_seed."""
ROPE_MAX_SEQ_LEN = 1024
"""Positions per axis in the experts' rotary table (diffusers' WanTransformer3DModel default and the
released checkpoints' ``rope_max_seq_len``): more latent frames than this cannot be embedded."""
MAX_SHIFT = 1000.0
MAX_GUIDE_SCALE = 100.0

Rule = Callable[[Any, TaskConfig], "str | None"]
"""A check: ``None`` if the value is allowed, else what is allowed (the message after the flag and value)."""


def _number(low: float, high: float, *, low_open: bool = False) -> Rule:
    def check(value: Any, config: TaskConfig) -> str | None:
        finite = isinstance(value, int) or math.isfinite(value)  # math.isfinite overflows on huge ints
        ok = finite and (value > low if low_open else value >= low) and value <= high
        return None if ok else f"must be a finite number {'>' if low_open else '>='} {low:g} and <= {high:g}"

    return check


def _count(low: int, high: int | None = None) -> Rule:
    def check(value: Any, config: TaskConfig) -> str | None:
        if low <= value and (high is None or value <= high):
            return None
        return f"must be an integer >= {low}" + ("" if high is None else f" and <= {high}")

    return check


def _choice(choices: tuple[str, ...]) -> Rule:
    def check(value: Any, config: TaskConfig) -> str | None:
        return None if value in choices else f"choose one of: {', '.join(choices)}"

    return check


def _seed(value: int, config: TaskConfig) -> str | None:
    return None if value == -1 or 0 <= value <= SEED_MAX else f"must be -1 (random) or 0 to {SEED_MAX}"


def _steps(value: int, config: TaskConfig) -> str | None:
    return _count(1, config.num_train_timesteps)(value, config)


def _size(value: str, config: TaskConfig) -> str | None:
    if value not in config.sizes:
        return f"task {config.task} takes W*H, one of: {', '.join(config.sizes)}"
    width, height = (int(v) for v in value.split("*"))
    step_w = config.vae_stride[2] * config.patch_size[2]
    step_h = config.vae_stride[1] * config.patch_size[1]
    if width % step_w or height % step_h:
        return f"task {config.task} lists it, but sizes must be multiples of {step_w} wide and {step_h} high"
    return None


def max_frame_num(config: TaskConfig) -> int:
    """The most pixel frames whose latent frames fit the experts' positional table."""
    return (ROPE_MAX_SEQ_LEN - 1) * config.vae_stride[0] + 1


def _frame_num(value: int, config: TaskConfig) -> str | None:
    stride = config.vae_stride[0]
    if value > max_frame_num(config):
        return f"at most {max_frame_num(config)}: the model's positional table holds {ROPE_MAX_SEQ_LEN} latent frames"
    if value < 1 or (value - 1) % stride:
        lower = max(1, (value - 1) // stride * stride + 1)
        return f"must be {stride}n+1 (e.g. {lower} or {lower + stride})"
    return None


def _prompt(value: str, config: TaskConfig) -> str | None:

    return None if clean_prompt(value) else "the prompt is empty after cleaning (white space, HTML, mojibake)"


def _device(value: str, config: TaskConfig) -> str | None:
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        return "not a device; use cpu, cuda or cuda:N"
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        return "not supported; use cpu, cuda or cuda:N"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return "CUDA is not available on this machine; use --device cpu"
    if device.index is not None and device.index >= count:
        return f"this machine has {count} CUDA device(s): cuda:0 to cuda:{count - 1}"
    return None


def _folder(value: str, config: TaskConfig) -> str | None:
    path = Path(value)
    if not value:
        return "an empty path; give a folder"
    if not path.exists():
        return "does not exist"
    if not path.is_dir():
        return "is not a folder"
    return None if os.access(path, os.R_OK | os.X_OK) else "is not readable"


def _readable_file(value: str, config: TaskConfig) -> str | None:
    path = Path(value)
    if not value:
        return "an empty path; give a file"
    if not path.exists():
        return "does not exist"
    if not path.is_file():
        return "is not a file (a folder?)"
    return None if os.access(path, os.R_OK) else "is not readable"


def _video_file(value: str, config: TaskConfig) -> str | None:
    path = Path(value)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        return "must end in .mp4 (video) or .png (frame grid)"
    if path.is_dir():
        return "is a folder; give a file name ending in .mp4 or .png"
    return writable_target_problem(path.parent)


def _output_folder(value: str, config: TaskConfig) -> str | None:
    if not value:
        return "an empty path; give a folder"
    path = Path(value)
    if path.exists() and not path.is_dir():
        return "is a file, not a folder"
    return writable_target_problem(path)


def _non_empty(value: str, config: TaskConfig) -> str | None:
    return None if value.strip() else "must not be empty"


def _cache_spec(value: str, config: TaskConfig) -> str | None:
    from wan.levers.cache import parse_cache_spec

    if value.strip().lower() == "none":
        return None
    try:
        parse_cache_spec(value)
    except ConfigError as exc:
        return str(exc).removeprefix(f"--cache {value}: ")
    return None


def _lora_list(value: list[str], config: TaskConfig) -> str | None:
    from wan.lora import parse_lora_arg

    for entry in value:
        path, scale = parse_lora_arg(entry)
        which = f"{entry}: " if len(value) > 1 else ""
        if not math.isfinite(scale):
            return f"{which}the scale must be a finite number"
        if not path.is_file() or not os.access(path, os.R_OK):
            return f"{which}{path} is not a readable file; give FILE[:SCALE] of a LoRA .safetensors"
    return None


def _lora_folder(value: list[str] | str, config: TaskConfig) -> str | None:
    from wan.lora import parse_lora_arg

    for entry in [value] if isinstance(value, str) else value:
        folder, scale = parse_lora_arg(entry)
        if not math.isfinite(scale):
            return "the scale must be a finite number"
        if not folder.is_dir():
            return f"{folder} is not a folder; give DIR[:SCALE] of a LoRA pair (high/low files)"
    return None


def _half_frame_window(value: str, config: TaskConfig) -> str | None:
    from wan.half_frame import Window

    try:
        Window.parse(value)
    except ConfigError as exc:
        return str(exc).removeprefix("--half_frame_steps ")
    return None


RULES: dict[str, Rule] = {
    "prompt": _prompt,
    "size": _size,
    "frame_num": _frame_num,
    "base_seed": _seed,
    "sample_solver": _choice(SOLVERS),
    "sample_steps": _steps,
    "sample_shift": _number(0, MAX_SHIFT, low_open=True),
    "sample_guide_scale": _number(0, MAX_GUIDE_SCALE),
    "frame_completion": _choice(COMPLETIONS),
    "half_frame_steps": _half_frame_window,
    "half_frame_positions": _choice(POSITIONS),
    "cfg_truncate_steps": _count(0),
    "cfg_truncate_high_noise_steps": _count(0),
    "ulysses_size": _count(1),
    "device": _device,
    "ckpt_dir": _folder,
    "prompt_file": _readable_file,
    "image": _readable_file,
    "save_file": _video_file,
    "save_dir": _output_folder,
    "attention_backend": _non_empty,
    "cache": _cache_spec,
    "dist_timeout_s": _number(0, 86400, low_open=True),
    "lora": _lora_list,
    "lora_high": _lora_list,
    "lora_low": _lora_list,
    "lora_dir": _lora_folder,
}
"""Flag (argparse dest, batch item key) -> check. Flags not listed take any value argparse accepts."""


def show(value: Any) -> str:
    if isinstance(value, list):  # a repeatable flag
        return " ".join(map(str, value))
    return repr(value) if isinstance(value, str) else str(value)


def check_flags(flags: Mapping[str, Any], config: TaskConfig) -> None:
    """Raise ``ConfigError`` for the first flag that ``RULES`` refuses; ``None`` means "the default"."""
    for name, rule in RULES.items():
        value = flags.get(name)
        if value is not None and (reason := rule(value, config)):
            raise ConfigError(f"--{name} {show(value)}: {reason}")
