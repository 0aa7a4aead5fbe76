"""What a task adds to the latent at every step, as one small object the loop calls.

Text-to-video adds nothing (``TextOnly``). Image-to-video tasks (``wan.tasks``) concatenate a mask and
the image's latent to the model input, or pin the first latent frame to the image and give its tokens
timestep 0. The loop in ``wan.text2video`` calls the same four methods for every task, so a task is a
config plus a conditioning, never a new copy of the loop.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Conditioning(Protocol):
    def model_input(self, latents: torch.Tensor) -> torch.Tensor:
        """The expert's input for ``latents`` (the same frame count)."""

    def timestep(self, t: float, latents: torch.Tensor) -> torch.Tensor:
        """The expert's timestep for ``latents``: shape [1], or [1, tokens] for per-token timesteps."""

    def after_step(self, latents: torch.Tensor) -> torch.Tensor:
        """The latent after a solver step (a task may pin conditioned frames)."""

    def at_frames(self, frames: int) -> Conditioning:
        """The same conditioning for a latent of ``frames`` frames (half-frame generation)."""


class TextOnly:
    """Text-to-video: the text embeddings are the only condition, passed to the expert separately."""

    def model_input(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def timestep(self, t: float, latents: torch.Tensor) -> torch.Tensor:
        return torch.full((latents.shape[0],), t, device=latents.device)

    def after_step(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def at_frames(self, frames: int) -> TextOnly:
        return self
