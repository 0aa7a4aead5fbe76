"""Motion amplitude on ``t2v-tiny``: how far each captioned shape travels, or how much it grows, in a video.

PSNR says a video differs from the baseline, not how; half-frame generation's known failure is a
motion that stops short. Each captioned colour's pixels are segmented as the adherence detector
does (``evaluation.adherence.colour_masks``: nearest palette colour, background and far pixels
dropped) and tracked frame by frame:

- a translation's amplitude is the centroid's least-squares travel over the clip along the
  captioned direction, in frame units (negative when it goes the wrong way);
- growing / shrinking's amplitude is the log of the end/start size ratio (half the least-squares
  log-area change), signed so that the captioned direction is positive.

A video's amplitude is the mean over the caption's colours (a colour never seen counts as 0). The
world's range for a caption is what the renderer draws at that clip length (``world_range``), so an
amplitude can be read against the baseline's and against the ground truth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from evaluation.adherence import colour_masks
from evaluation.tiny_world import MAX_FRAMES, SCALE, TRANSLATIONS, TRAVEL, Caption

MIN_PIXELS = 4
"""A colour counts as seen in a frame from this many pixels on (single stray pixels are noise)."""
MIN_BASELINE_FRACTION = 0.25
"""No ratio to a baseline that moves less than this fraction of the world's least amplitude: a
near-still baseline would turn any motion into an arbitrarily large ratio."""


@dataclass(frozen=True)
class Track:
    """One colour's per-frame centroid (frame units, y down) and area (fraction of the frame)."""

    colour: str
    centroid: np.ndarray  # [F, 2], NaN where the colour is not seen
    area: np.ndarray  # [F]

    @property
    def seen(self) -> np.ndarray:
        return ~np.isnan(self.centroid[:, 0])


def tracks(video: torch.Tensor | np.ndarray, colours: Sequence[str]) -> list[Track]:
    """Centroid and area of each of ``colours`` in every frame of ``video`` (see ``adherence._frames``)."""
    masks = colour_masks(video)
    out = []
    for colour in colours:
        mask = masks[colour].double()  # [F, H, W]
        frames, height, width = mask.shape
        scale = float(min(height, width))
        count = mask.sum(dim=(1, 2))
        ys = (torch.arange(height, dtype=torch.float64).view(1, -1, 1) + 0.5) / scale
        xs = (torch.arange(width, dtype=torch.float64).view(1, 1, -1) + 0.5) / scale
        cx = (mask * xs).sum(dim=(1, 2)) / count.clamp(min=1)
        cy = (mask * ys).sum(dim=(1, 2)) / count.clamp(min=1)
        centroid = torch.stack([cx, cy], dim=1).numpy()
        centroid[(count < MIN_PIXELS).numpy()] = np.nan
        out.append(Track(colour, centroid, (count / (height * width)).numpy()))
    return out


def _travel(values: np.ndarray, seen: np.ndarray) -> float:
    """Least-squares change of ``values`` over the whole clip (slope over the seen frames x span)."""
    t = np.arange(len(values), dtype=np.float64)[seen]
    v = values[seen]
    if len(t) < 2:
        return 0.0
    t = t - t.mean()
    return float((t * (v - v.mean())).sum() / (t * t).sum()) * (len(values) - 1)


def amplitude(track: Track, motion: str) -> float:
    """Signed amplitude of one track for the captioned ``motion`` (module docstring)."""
    seen = track.seen
    if seen.sum() < 2:
        return 0.0
    if motion in TRANSLATIONS:
        ux, uy = TRANSLATIONS[motion]
        return ux * _travel(track.centroid[:, 0], seen) + uy * _travel(track.centroid[:, 1], seen)
    log_size = 0.5 * np.log(np.where(seen, track.area, 1.0))
    change = _travel(log_size, seen)
    return change if motion == "growing" else -change


def video_amplitude(video: torch.Tensor | np.ndarray, prompt: str) -> float:
    """Mean signed amplitude over the caption's colours."""
    caption = Caption.parse(prompt)
    return float(np.mean([amplitude(t, caption.motion) for t in tracks(video, caption.colours)]))


def world_range(motion: str, frames: int) -> tuple[float, float]:
    """The renderer's amplitude range for ``motion`` over a clip of ``frames`` frames."""
    fraction = (frames - 1) / (MAX_FRAMES - 1)
    low, high = TRAVEL if motion in TRANSLATIONS else (math.log(SCALE[0]), math.log(SCALE[1]))
    return low * fraction, high * fraction


def motion_scores(video: torch.Tensor | np.ndarray, prompt: str, baseline_amplitude: float | None) -> dict:
    """A video's amplitude, its ratio to the baseline's and its place in the world's range (0..1 inside)."""
    frames = video.shape[0] if isinstance(video, np.ndarray) and video.dtype == np.uint8 else video.shape[1]
    amp = video_amplitude(video, prompt)
    low, high = world_range(Caption.parse(prompt).motion, frames)
    moving = baseline_amplitude is not None and abs(baseline_amplitude) >= MIN_BASELINE_FRACTION * low
    ratio = amp / baseline_amplitude if moving else None
    return {"amplitude": amp, "amplitude_vs_baseline": ratio, "amplitude_in_world_range": (amp - low) / (high - low)}


def summarise_motion(rows: Sequence[dict]) -> dict[str, float | None]:
    """Per mode: mean amplitude ratio to the baseline and mean |ratio - 1| (the motion error)."""
    ratios = [r["amplitude_vs_baseline"] for r in rows if r.get("amplitude_vs_baseline") is not None]
    if not ratios:
        return {"amplitude_vs_baseline": None, "motion_error": None}
    return {
        "amplitude_vs_baseline": float(np.mean(ratios)),
        "motion_error": float(np.mean(np.abs(np.asarray(ratios) - 1))),
    }
