"""Text-to-video: nothing beyond the latents; one timestep per sample."""

from __future__ import annotations

import torch
from torch import Tensor


class TextConditioning:
    """The identity conditioning (t2v-A14B, the tiny models)."""

    def model_input(self, latents: Tensor) -> Tensor:
        return latents

    def timestep(self, t: float, latents: Tensor) -> Tensor:
        return torch.full((latents.shape[0],), t, device=latents.device)

    def after_step(self, latents: Tensor) -> Tensor:
        return latents

    def at_frames(self, frames: int) -> TextConditioning:
        return self
