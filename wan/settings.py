"""GenerationSettings: everything that decides one video, filled from the task config and checked as a whole.

Each setting's own check is its flag's rule in ``wan.validation``; what needs several settings at once
(memory for the decoded video) is checked here, on the resolved values the sidecar records. What
depends on the schedule (a half-frame window that has low-noise steps to complete its frames) is
checked where the schedule is made, in ``wan.plan``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from wan.choices import PLAIN_HALF_FRAME_STEPS
from wan.config import TaskConfig
from wan.errors import ConfigError
from wan.validation import check_flags

DEFAULT_COMPLETION = "renoise"
"""Completion used when none is named (chosen from the table in docs/QUALITY.md)."""
IMPROVED_COMPLETION = DEFAULT_COMPLETION
"""What the seed's ``--enable_improved_frame_completion`` selects: the best completion measured, which is
already the default, so the flag is an accepted alias that overrides ``--frame_completion``."""

SETTING_FLAGS = {
    "seed": "base_seed",
    "guide_scale_high": "sample_guide_scale",
    "guide_scale_low": "sample_guide_scale",
}
"""GenerationSettings fields whose flag has another name; the other fields are named as their flags."""

VIDEO_BYTES_PER_PIXEL = 3 * (4 + 1)
"""The decoded video is held as float32 [3, F, H, W] and then as uint8 frames: a floor on the memory a run needs."""


@dataclass
class GenerationSettings:
    """Everything that decides a video (besides the weights); recorded in the JSON sidecar."""

    prompt: str
    negative_prompt: str | None = None  # None: the task's default
    size: str | None = None  # "W*H"; None: the task's default
    frame_num: int | None = None
    seed: int = 0
    sample_solver: str | None = None
    sample_steps: int | None = None
    sample_shift: float | None = None
    guide_scale_high: float | None = None
    guide_scale_low: float | None = None
    half_frame: bool = False
    half_frame_steps: str | None = None  # "START:END" high-noise steps at half frames; None: the default
    half_frame_positions: str = "contiguous"
    frame_completion: str = DEFAULT_COMPLETION
    cfg_truncate_steps: int = 0
    cfg_truncate_high_noise_steps: int = 0
    image: str | None = None  # the conditioning image of an image-to-video task

    def resolved(self, config: TaskConfig) -> GenerationSettings:
        """Fill every ``None`` from the task config and check the result: the sidecar holds real values."""
        s = GenerationSettings(**asdict(self))
        s.negative_prompt = config.negative_prompt if s.negative_prompt is None else s.negative_prompt
        s.size = config.default_size if s.size is None else s.size
        s.frame_num = config.frame_num if s.frame_num is None else s.frame_num
        s.sample_solver = config.sample_solver if s.sample_solver is None else s.sample_solver
        s.sample_steps = config.sample_steps if s.sample_steps is None else s.sample_steps
        s.sample_shift = config.sample_shift if s.sample_shift is None else s.sample_shift
        s.guide_scale_high = config.guide_scale_high if s.guide_scale_high is None else s.guide_scale_high
        s.guide_scale_low = config.guide_scale_low if s.guide_scale_low is None else s.guide_scale_low
        if s.half_frame:
            s.half_frame_steps = s.half_frame_steps or PLAIN_HALF_FRAME_STEPS
        check_settings(s, config)
        return s


def check_settings(settings: GenerationSettings, config: TaskConfig) -> None:
    """Resolved settings: every field by its flag's rule, then what depends on several of them."""
    check_flags({SETTING_FLAGS.get(k, k): v for k, v in asdict(settings).items()}, config)
    if config.kind == "i2v" and settings.image is None:
        raise ConfigError(f"task {config.task} makes a video from an image; pass --image PATH")
    if config.kind == "t2v" and settings.image is not None:
        raise ConfigError(f"task {config.task} takes no image; drop --image or choose i2v-A14B or ti2v-5B")
    if settings.half_frame and config.boundary is None:
        raise ConfigError(
            f"--enable_half_frame_generation needs an expert switch; task {config.task} has one dense expert, "
            "so drop the flag (half frames apply to the two-expert A14B tasks)"
        )
    width, height = (int(v) for v in settings.size.split("*"))
    needed = settings.frame_num * width * height * VIDEO_BYTES_PER_PIXEL
    available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if needed > available:
        raise ConfigError(
            f"--frame_num {settings.frame_num} at {settings.size}: the decoded video alone needs "
            f"{needed / 2**30:.1f} GiB, more than this machine's {available / 2**30:.1f} GiB of memory"
        )


def settings_from_flags(flags: Mapping[str, Any], seed: int) -> GenerationSettings:
    """Generation settings from CLI-named flags (the command line's, or a batch item's over them); unresolved."""
    if flags.get("enable_improved_frame_completion"):
        completion = IMPROVED_COMPLETION
    else:
        completion = flags.get("frame_completion") or DEFAULT_COMPLETION
    guide = flags.get("sample_guide_scale")
    return GenerationSettings(
        prompt=flags.get("prompt") or "",
        negative_prompt=flags.get("negative_prompt"),
        size=flags.get("size"),
        frame_num=flags.get("frame_num"),
        seed=seed,
        sample_solver=flags.get("sample_solver"),
        sample_steps=flags.get("sample_steps"),
        sample_shift=flags.get("sample_shift"),
        guide_scale_high=guide,
        guide_scale_low=guide,
        half_frame=bool(flags.get("enable_half_frame_generation")),
        half_frame_steps=flags.get("half_frame_steps"),
        half_frame_positions=flags.get("half_frame_positions") or "contiguous",
        frame_completion=completion,
        cfg_truncate_steps=flags.get("cfg_truncate_steps") or 0,
        cfg_truncate_high_noise_steps=flags.get("cfg_truncate_high_noise_steps") or 0,
        image=flags.get("image"),
    )
