"""Image-to-video A14B: the image enters as extra input channels (4 mask + the image-video latent).

The condition is the VAE latent of the video "image, then black frames" (``frame_num`` frames), so
its first latent frame is the image's; the mask says which pixel frames are given (only the first).
The expert sees ``cat([latents, mask, image_latent], dim=1)``: 16 + 4 + 16 = 36 channels for A14B.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from wan.conditioning import TextOnly
from wan.tasks.latents import encode_normalised, latent_frame_mask, select_frames


@dataclass(frozen=True)
class ImageChannelConditioning(TextOnly):
    full: Tensor
    """[B, 4 + C, T, h, w] at the full latent frame count: mask channels, then the image latent."""
    frames: int

    @classmethod
    def build(
        cls, vae: torch.nn.Module, image: Tensor, *, frames: int, device: torch.device | str, dtype: torch.dtype
    ) -> ImageChannelConditioning:
        """From ``image`` [B, 3, H, W] in [-1, 1] and the pixel frame count ``frames``."""
        batch, _, height, width = image.shape
        image = image.to(device=device, dtype=torch.float32)
        video = torch.cat([image.unsqueeze(2), image.new_zeros(batch, 3, frames - 1, height, width)], dim=2)
        latent = encode_normalised(vae, video, device=device, dtype=dtype)
        stride = vae.config.scale_factor_temporal
        known = torch.zeros(frames)
        known[0] = 1
        mask = latent_frame_mask(known, stride)  # [stride, T]
        mask = mask[None, :, :, None, None].expand(batch, -1, -1, *latent.shape[-2:]).to(latent.device)
        full = torch.cat([mask, latent], dim=1)
        return cls(full=full, frames=full.shape[2])

    def model_input(self, latents: Tensor) -> Tensor:
        return torch.cat([latents, select_frames(self.full, self.frames)], dim=1)

    def at_frames(self, frames: int) -> ImageChannelConditioning:
        select_frames(self.full, frames)  # refuses counts that are neither full nor half
        return replace(self, frames=frames)
