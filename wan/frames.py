"""Latent frame arithmetic and frame completion for half-frame generation (pure tensor functions).

Wan's VAE packs 4 pixel frames into one latent frame after the first, so a video of ``frame_num``
frames (4n+1) has ``T = (frame_num - 1) // 4 + 1`` latent frames. Half-frame generation lets the
high-noise expert denoise ``Th = ceil(T / 2)`` of them for a window of steps and completes the latent
to ``T`` frames at the window's end (``wan.half_frame`` decides when). Half-frame latent frame ``i``
stands for full frame ``2 i`` (the start noise is the full noise at frames 0, 2, 4, ...), so every
completion maps full frame ``j`` to half position ``j / 2``.
"""

from __future__ import annotations

import math

import torch

from wan.choices import COMPLETIONS
from wan.errors import ConfigError

X0_COMPLETIONS = ("renoise", "renoise_fresh")


def latent_frame_count(frame_num: int, temporal_stride: int = 4) -> int:
    """Latent frames for ``frame_num`` pixel frames; refuses counts that are not ``stride * n + 1``."""
    if frame_num < 1 or (frame_num - 1) % temporal_stride != 0:
        lower = max(1, (frame_num - 1) // temporal_stride * temporal_stride + 1)
        raise ConfigError(
            f"frame_num {frame_num} is not {temporal_stride}n+1; use e.g. {lower} or {lower + temporal_stride}"
        )
    return (frame_num - 1) // temporal_stride + 1


def half_frame_count(full_frames: int) -> int:
    return math.ceil(full_frames / 2)


def half_frame_indices(full_frames: int) -> list[int]:
    """The full-frame indices that the half-frame latent keeps (0, 2, 4, ...)."""
    return list(range(0, full_frames, 2))


def repeat_indices(full_frames: int) -> list[int]:
    """Source index (into the half latent) of every full frame: 0,0,1,1,2,2,... exactly ``full_frames`` long."""
    return [j // 2 for j in range(full_frames)]


def complete_repeat(half: torch.Tensor, full_frames: int) -> torch.Tensor:
    """F1,F1,F2,F2,...: each half frame twice, the last once when ``full_frames`` is odd."""
    _check_half(half, full_frames)
    index = torch.tensor(repeat_indices(full_frames), device=half.device)
    return half.index_select(2, index).contiguous()


def complete_interpolate(half: torch.Tensor, full_frames: int) -> torch.Tensor:
    """Linear interpolation in time: full frame ``j`` sits at half position ``j / 2``.

    Even ``j`` copy their half frame exactly; odd ``j`` average their two neighbours; for even
    ``full_frames`` the last frame lies past the last half frame and copies it.
    """
    _check_half(half, full_frames)
    th = half.shape[2]
    pos = torch.arange(full_frames, dtype=torch.float64) / 2
    lo = pos.floor().long().clamp(max=th - 1)
    hi = (lo + 1).clamp(max=th - 1)
    w = (pos - lo).clamp(0, 1).to(half.dtype).to(half.device).view(1, 1, -1, 1, 1)
    lo, hi = lo.to(half.device), hi.to(half.device)
    return (half.index_select(2, lo) * (1 - w) + half.index_select(2, hi) * w).contiguous()


def predict_x0(sample: torch.Tensor, velocity: torch.Tensor, sigma: float) -> torch.Tensor:
    """Flow matching: x_t = (1 - s) x0 + s eps and v = eps - x0, so x0 = x_t - s v."""
    return sample - sigma * velocity


def renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """Put a clean estimate back on the flow path at ``sigma``: (1 - s) x0 + s eps."""
    return (1 - sigma) * x0 + sigma * noise


def complete_frames(
    method: str,
    half_sample: torch.Tensor,
    full_frames: int,
    *,
    x0: torch.Tensor | None = None,
    switch_sigma: float | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Complete ``half_sample`` [B, C, Th, H, W] to [B, C, full_frames, H, W] with ``method``.

    The x0 methods need the last high-noise x0 estimate (``predict_x0`` of that step's sample and
    output, half frames), the sigma of the first low-noise step and full-frame noise.
    """
    if method == "repeat":
        return complete_repeat(half_sample, full_frames)
    if method == "interpolate":
        return complete_interpolate(half_sample, full_frames)
    if method in X0_COMPLETIONS:
        if x0 is None or switch_sigma is None or noise is None:
            raise ValueError(f"completion {method!r} needs x0, switch_sigma and noise")
        x0_full = complete_interpolate(x0, full_frames)
        if noise.shape != x0_full.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} does not match completed {tuple(x0_full.shape)}")
        return renoise(x0_full, noise.to(x0_full.dtype), switch_sigma).contiguous()
    raise ConfigError(f"unknown frame completion {method!r}; choose one of: {', '.join(COMPLETIONS)}")


def _check_half(half: torch.Tensor, full_frames: int) -> None:
    if half.ndim != 5:
        raise ValueError(f"expected a latent [B, C, T, H, W], got shape {tuple(half.shape)}")
    if half.shape[2] != half_frame_count(full_frames):
        raise ValueError(
            f"half latent has {half.shape[2]} frames; {full_frames} full frames need {half_frame_count(full_frames)}"
        )
