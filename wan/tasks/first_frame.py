"""TI2V-5B: one timestep per token; with an image, the first latent frame is the image latent.

Without an image every token runs at the step's timestep (the per-token form is kept: the expert's
arithmetic differs from the per-sample form). With one, the first latent frame of the expert's input
is the image's latent and its tokens sit at timestep 0 (already clean); after every step the first
frame is set back to the image latent, so the finished latent starts with the image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from wan.conditioning import TextOnly
from wan.tasks.latents import encode_normalised, first_frame_mask, token_timesteps


@dataclass(frozen=True)
class FirstFrameConditioning(TextOnly):
    image_latent: Tensor | None
    """[B, C, 1, h, w], or None for text-to-video."""
    mask: Tensor
    """[1, 1, T, h, w] float32: 0 on the given first frame, 1 elsewhere."""
    patch: tuple[int, int]

    @classmethod
    def build(
        cls,
        vae: torch.nn.Module,
        image: Tensor | None,
        *,
        frames: int,
        height: int,
        width: int,
        device: torch.device | str,
        dtype: torch.dtype,
        patch_size: tuple[int, int, int] = (1, 2, 2),
    ) -> FirstFrameConditioning:
        """From ``image`` [B, 3, H, W] in [-1, 1] (or None) and the pixel frame count ``frames``."""
        latent = None
        if image is not None:
            image = image.to(device=device, dtype=torch.float32)
            latent = encode_normalised(vae, image.unsqueeze(2), device=device, dtype=dtype)
        latent_frames = (frames - 1) // vae.config.scale_factor_temporal + 1
        spatial = vae.config.scale_factor_spatial
        mask = first_frame_mask(
            latent_frames, height // spatial, width // spatial, given=latent is not None, device=device
        )
        return cls(image_latent=latent, mask=mask.to(dtype), patch=(patch_size[1], patch_size[2]))

    def model_input(self, latents: Tensor) -> Tensor:
        if self.image_latent is None:
            return latents
        return (1 - self.mask) * self.image_latent + self.mask * latents

    def timestep(self, t: float, latents: Tensor) -> Tensor:
        return token_timesteps(self.mask, t, self.patch, latents.shape[0])

    def after_step(self, latents: Tensor) -> Tensor:
        return self.model_input(latents)

    def at_frames(self, frames: int) -> FirstFrameConditioning:
        if frames == self.mask.shape[2]:
            return self
        mask = self.mask[:, :, :1].expand(-1, -1, frames, -1, -1).clone()
        mask[:, :, 1:] = 1
        return replace(self, mask=mask)
