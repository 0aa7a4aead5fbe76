"""Half-frame generation as one concept: which steps run on half the latent frames, and the transitions.

A ``HalfFramePlan`` says, for every sampling step, how many latent frames the expert sees: the full
``T`` or the half ``ceil(T / 2)`` (frames 0, 2, 4, ... of the full latent: half frame ``j`` *is* full
frame ``2 j``). Half frames run in one window of high-noise steps ``[start, end)``; the seed's plain
method is the window from the first step to the expert switch. The sampling loop asks the plan for
each step's frame count and calls ``transition`` when it changes:

- down (full -> half): at the first step, the half latent is the seed's noise at the kept frames;
  later, the last x0 estimate at the kept frames is re-noised at the step's sigma with the seed's
  noise (the latent stays on the flow path, so the solver restarts at first order);
- up (half -> full): the frame completion of ``wan.frames`` (x0 completions re-noise with the seed's
  noise and restart the solver; x_t completions map the solver history with the latent).

Inside the window the high-noise expert may see stride-2 temporal RoPE positions (0, 2, 4, ...: each
half frame at its place on the full clip's timeline) instead of 0, 1, 2, ...; the override is a
forward hook on the expert's ``rope`` module, installed only for the steps that need it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from wan.choices import POSITIONS
from wan.config import HIGH
from wan.errors import ConfigError
from wan.frames import X0_COMPLETIONS, complete_frames, half_frame_count, half_frame_indices, renoise
from wan.solvers import complete_history, restart_history

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """Steps ``[start, end)`` run at half frames; ``end`` None: up to the expert switch."""

    start: int
    end: int | None

    @classmethod
    def parse(cls, text: str) -> Window:
        """``START:END`` (step indices, END exclusive) or ``START:`` (to the expert switch)."""
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d*)\s*", text)
        if not match:
            raise ConfigError(f"--half_frame_steps must be START:END or START: (step indices), got {text!r}")
        start, end = int(match[1]), int(match[2]) if match[2] else None
        if end is not None and end <= start:
            raise ConfigError(f"--half_frame_steps {text!r} is empty: END must be greater than START")
        return cls(start, end)


def in_window(window: Window, experts: Sequence[str]) -> list[bool]:
    """Which steps run at half frames: those in the window, which must lie in the high-noise phase."""
    high_steps = sum(e == HIGH for e in experts)
    if any(e == HIGH for e in experts[high_steps:]):
        raise ConfigError("half-frame generation needs every high-noise step before the first low-noise one")
    if high_steps == len(experts):
        raise ConfigError(
            "half-frame generation needs low-noise steps to complete the frames; no step is below "
            "the boundary with these --sample_steps/--sample_shift"
        )
    end = high_steps if window.end is None else window.end
    if end > high_steps or window.start >= end:
        raise ConfigError(
            f"--half_frame_steps {window.start}:{window.end or ''} must lie within the {high_steps} "
            f"high-noise steps (0:{high_steps})"
        )
    return [window.start <= i < end for i in range(len(experts))]


def frame_counts(window: Window, experts: Sequence[str], full_frames: int) -> list[int]:
    """Latent frames of every step: half inside the window, full elsewhere (the low-noise phase is full)."""
    half = half_frame_count(full_frames)
    return [half if inside else full_frames for inside in in_window(window, experts)]


def dit_tokens(counts: Sequence[int], forwards: Sequence[int]) -> int:
    """Latent frames processed over a run (times tokens per frame gives the DiT tokens)."""
    return sum(c * f for c, f in zip(counts, forwards, strict=True))


@dataclass(frozen=True)
class HalfFramePlan:
    """Frame count per step, the completion at the way up, and the half phase's RoPE positions."""

    counts: tuple[int, ...]
    full_frames: int
    completion: str = "renoise"
    positions: str = "contiguous"

    @classmethod
    def build(
        cls,
        steps: str | None,
        experts: Sequence[str],
        full_frames: int,
        completion: str = "renoise",
        positions: str = "contiguous",
    ) -> HalfFramePlan:
        """The plan of ``--half_frame_steps`` (None: every step at full frames)."""
        if positions not in POSITIONS:
            raise ConfigError(f"unknown --half_frame_positions {positions!r}; choose one of: {', '.join(POSITIONS)}")
        if steps is None:
            return cls((full_frames,) * len(experts), full_frames, completion, positions)
        return cls(tuple(frame_counts(Window.parse(steps), experts, full_frames)), full_frames, completion, positions)

    def frames(self, step: int) -> int:
        return self.counts[step]

    def positions_for(self, expert: torch.nn.Module, step: int):
        """Context for one step's forwards: stride-2 RoPE on half-frame steps where asked, else nothing."""
        if self.positions == "stride2" and self.counts[step] < self.full_frames:
            return temporal_stride(expert, 2)
        return nullcontext()


def transition(
    plan: HalfFramePlan,
    latents: torch.Tensor,
    frames: int,
    *,
    x0: torch.Tensor | None,
    sigma: float,
    noise: torch.Tensor,
    scheduler,
    generator: torch.Generator,
) -> torch.Tensor:
    """Bring ``latents`` (and the solver history) to ``frames`` latent frames before a step at ``sigma``.

    ``x0`` is the previous step's clean estimate (None before the first step), ``noise`` the seed's
    full-frame start noise.
    """
    full_frames = plan.full_frames
    if frames < latents.shape[2]:
        keep = torch.tensor(half_frame_indices(full_frames), device=latents.device)
        out = noise.index_select(2, keep) if x0 is None else downsample_renoise(x0, noise, sigma)
        restart_history(scheduler)
    elif plan.completion in X0_COMPLETIONS:
        if plan.completion == "renoise_fresh":  # the seed's generator continues: new noise, same every run
            noise = torch.randn(noise.shape, generator=generator, dtype=noise.dtype).to(noise.device)
        out = complete_frames(plan.completion, latents, full_frames, x0=x0, switch_sigma=sigma, noise=noise)
        restart_history(scheduler)
    else:
        out = complete_frames(plan.completion, latents, full_frames)
        complete_history(scheduler, lambda t: complete_frames(plan.completion, t, full_frames))
    logger.debug("latent frames %d -> %d at sigma %.4f", latents.shape[2], out.shape[2], sigma)
    return out.to(latents.dtype).contiguous()


def downsample_renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """Full-frame x0 -> half frames (full frame 2 j becomes half frame j), re-noised with the seed's noise."""
    keep = torch.tensor(half_frame_indices(x0.shape[2]), device=x0.device)
    return renoise(x0.index_select(2, keep), noise.index_select(2, keep).to(x0.dtype), sigma)


def strided_rope(freqs: tuple[torch.Tensor, torch.Tensor], frames: int, stride: int):
    """Pick every ``stride``-th temporal position from RoPE tables built for ``frames * stride`` frames."""
    picked = []
    for table in freqs:  # [1, frames * stride * rest, 1, dim]
        per_frame = table.view(1, frames * stride, -1, *table.shape[2:])
        picked.append(per_frame[:, ::stride].reshape(1, -1, *table.shape[2:]))
    return tuple(picked)


@contextmanager
def temporal_stride(expert: torch.nn.Module, stride: int) -> Iterator[None]:
    """While open, ``expert.rope`` puts latent frame ``i`` at temporal position ``stride * i``.

    diffusers' ``WanRotaryPosEmbed`` builds its tables from the input's shape alone, so the hook
    asks it for a ``stride`` times longer clip (a shape-only meta tensor) and keeps every
    ``stride``-th frame.
    """

    def hook(module, args, output):
        hidden = args[0]
        frames = hidden.shape[2] // module.patch_size[0]
        longer = torch.empty(*hidden.shape[:2], hidden.shape[2] * stride, *hidden.shape[3:], device="meta")
        return strided_rope(module.forward(longer), frames, stride)  # forward() itself skips the hooks

    handle = expert.rope.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
