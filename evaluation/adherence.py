"""Prompt adherence on ``t2v-tiny``: does the video show the captioned colours doing the captioned motion?

No learned model: every pixel takes the nearest colour of the tiny world's palette (or the
background), pixels far from all of them are ignored, and the frame-by-frame area and centroid of
each colour's pixels give

- the colours present, largest mean area first (the first is the dominant shape's colour);
- the motion of those colours' pixels together: growing/shrinking when the area changes by more
  than ``AREA_RATIO`` over the clip (least-squares slope of log area), else the axis and sign of
  the centroid's least-squares displacement, if it exceeds ``MIN_TRAVEL`` of the frame.

A one-shape caption matches when its colour is the dominant one and the motion is right; a
two-shape caption when its two colours are the two largest (any order) and their pixels together
do the captioned motion. Shapes are not checked: colour and motion are what the eye reads first
and what the accelerated modes are most likely to break.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from evaluation.tiny_world import BACKGROUND, COLOURS, TRANSLATIONS, Caption

MAX_COLOUR_DISTANCE = 0.3
"""RGB distance (in [0, 1] units) beyond which a pixel is no palette colour: keeps blurred edges
between a colour and the background (e.g. yellow on grey looks green-brown) out of the counts."""
MIN_AREA = 0.002
"""Mean fraction of the frame a colour must cover to count as present (33 px at 128 x 128)."""
AREA_RATIO = 1.5
"""End/start area ratio beyond which the motion is growing (or 1/ratio: shrinking)."""
MIN_TRAVEL = 0.04
"""Least centroid displacement over the clip, in frame units, that counts as a translation."""

_NAMES = (*COLOURS, "background")
_PALETTE = torch.tensor([*COLOURS.values(), BACKGROUND], dtype=torch.float32)


@dataclass(frozen=True)
class Detection:
    """What the detector reads from one video."""

    colours: tuple[str, ...]  # present colours, largest mean area first
    motion: str | None  # one of tiny_world.MOTIONS, or None when nothing moves clearly
    displacement: tuple[float, float]  # centroid (dx, dy) over the clip, frame units, y down
    area_ratio: float  # end/start area of the tracked pixels (from the log-area slope)


@dataclass(frozen=True)
class Check:
    """One video against its prompt."""

    prompt: str
    expected_colours: tuple[str, ...]
    expected_motion: str
    detection: Detection
    colour_ok: bool
    motion_ok: bool

    @property
    def matched(self) -> bool:
        return self.colour_ok and self.motion_ok


def _frames(video: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Float tensor [3, F, H, W] in [-1, 1], or uint8 [F, H, W, 3] -> float [F, H, W, 3] in [0, 1]."""
    x = torch.as_tensor(np.asarray(video) if isinstance(video, np.ndarray) else video).detach().cpu()
    if x.dtype == torch.uint8:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"uint8 video must be [F, H, W, 3], got {tuple(x.shape)}")
        return x.float() / 255.0
    if x.ndim != 4 or x.shape[0] != 3:
        raise ValueError(f"float video must be [3, F, H, W] in [-1, 1], got {tuple(x.shape)}")
    return ((x.float().permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)


def colour_masks(video: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
    """Per palette colour, a bool mask [F, H, W] of the pixels nearest to it (and near enough)."""
    frames = _frames(video)
    distance = torch.cdist(frames.reshape(-1, 3), _PALETTE)
    nearest, label = distance.min(dim=1)
    label = torch.where(nearest <= MAX_COLOUR_DISTANCE, label, -1).view(frames.shape[:3])
    return {name: label == i for i, name in enumerate(_NAMES) if name != "background"}


def _slope(values: torch.Tensor, t: torch.Tensor) -> float:
    """Least-squares slope of ``values`` against the frame indices ``t``."""
    t = t - t.mean()
    return float((t * (values - values.mean())).sum() / (t * t).sum())


def _motion(mask: torch.Tensor) -> tuple[str | None, tuple[float, float], float]:
    """Motion of the pixels of ``mask`` [F, H, W]: (name or None, displacement, area ratio)."""
    frames, height, width = mask.shape
    area = mask.sum(dim=(1, 2)).double()
    seen = area > 0
    if seen.sum() < 2:
        return None, (0.0, 0.0), 1.0
    scale = float(min(height, width))
    ys = torch.arange(height, dtype=torch.float64).view(1, -1, 1)
    xs = torch.arange(width, dtype=torch.float64).view(1, 1, -1)
    weight = mask.double()
    cx = (weight * xs).sum(dim=(1, 2))[seen] / area[seen] / scale
    cy = (weight * ys).sum(dim=(1, 2))[seen] / area[seen] / scale
    # Slopes over the frames where the pixels are seen, scaled to the whole clip.
    t, span = torch.arange(frames, dtype=torch.float64)[seen], frames - 1
    dx, dy = _slope(cx, t) * span, _slope(cy, t) * span
    ratio = math.exp(_slope(area[seen].log(), t) * span)
    if ratio > AREA_RATIO:
        name = "growing"
    elif ratio < 1 / AREA_RATIO:
        name = "shrinking"
    elif max(abs(dx), abs(dy)) < MIN_TRAVEL:
        name = None
    else:
        axis = (math.copysign(1.0, dx), 0.0) if abs(dx) >= abs(dy) else (0.0, math.copysign(1.0, dy))
        name = next(k for k, v in TRANSLATIONS.items() if v == axis)
    return name, (dx, dy), ratio


def detect(video: torch.Tensor | np.ndarray, num_objects: int = 1) -> Detection:
    """Read the colours present and the motion of the ``num_objects`` largest colours together."""
    masks = colour_masks(video)
    pixels = next(iter(masks.values()))[0].numel()
    mean_area = {name: float(mask.sum()) / mask.shape[0] / pixels for name, mask in masks.items()}
    present = tuple(sorted((n for n, a in mean_area.items() if a >= MIN_AREA), key=lambda n: -mean_area[n]))
    tracked = present[:num_objects]
    if not tracked:
        return Detection(present, None, (0.0, 0.0), 1.0)
    union = torch.stack([masks[name] for name in tracked]).any(dim=0)
    motion, displacement, ratio = _motion(union)
    return Detection(present, motion, displacement, ratio)


def check(video: torch.Tensor | np.ndarray, prompt: str) -> Check:
    """Compare one video with its tiny-world prompt (see the module docstring for the rules)."""
    caption = Caption.parse(prompt)
    expected = caption.colours
    detection = detect(video, num_objects=len(expected))
    colour_ok = sorted(detection.colours[: len(expected)]) == sorted(expected)
    return Check(prompt, expected, caption.motion, detection, colour_ok, detection.motion == caption.motion)


def adherence(videos: Sequence[torch.Tensor | np.ndarray], prompts: Sequence[str]) -> float:
    """Fraction of videos that match their prompts (``check(...).matched``)."""
    if len(videos) != len(prompts):
        raise ValueError(f"{len(videos)} videos but {len(prompts)} prompts")
    if not videos:
        raise ValueError("no videos to score")
    return sum(check(v, p).matched for v, p in zip(videos, prompts, strict=True)) / len(videos)
