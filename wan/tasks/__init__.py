"""What each task adds to the denoising loop: its conditioning, behind one small interface.

The loop never asks which task it runs. It takes one ``wan.conditioning.Conditioning``, built before
the first step by ``prepare_conditioning``, and at every step feeds the expert
``conditioning.model_input(latents)`` at ``conditioning.timestep(t, latents)``, then passes the
solver's new latents through ``conditioning.after_step``; a step at another latent frame count
(half-frame generation) uses ``conditioning.at_frames(frames)``.

- ``t2v``: the latents alone, one timestep per sample (``wan.conditioning.TextOnly``);
- ``i2v``: mask (4 channels) and image latent concatenated to the latents (``wan.tasks.image_channels``);
- ``ti2v``: one timestep per token; with an image, the first latent frame is the image latent and its
  tokens sit at timestep 0 (``wan.tasks.first_frame``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from wan.conditioning import Conditioning, TextOnly
from wan.errors import ConfigError
from wan.tasks.first_frame import FirstFrameConditioning
from wan.tasks.image_channels import ImageChannelConditioning


def prepare_conditioning(
    task_kind: str,
    vae: torch.nn.Module,
    image: Tensor | None,
    *,
    frames: int,
    height: int,
    width: int,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    patch_size: tuple[int, int, int] = (1, 2, 2),
) -> Conditioning:
    """The conditioning of a run: ``image`` [1, 3, height, width] in [-1, 1] (``wan.image``) or None.

    ``frames`` is the pixel frame count (``frame_num``), ``dtype`` the latents' dtype (float32, as the
    solver keeps them); the model input is cast to the expert's dtype by the loop.
    """
    if task_kind == "i2v":
        if image is None:
            raise ConfigError("image-to-video needs an image; pass --image PATH")
        return ImageChannelConditioning.build(vae, image, frames=frames, device=device, dtype=dtype)
    if task_kind == "ti2v":
        return FirstFrameConditioning.build(
            vae, image, frames=frames, height=height, width=width, device=device, dtype=dtype, patch_size=patch_size
        )
    if task_kind == "t2v":
        if image is not None:
            raise ConfigError("this text-to-video task takes no image; drop --image or choose an image task")
        return TextOnly()
    raise ConfigError(f"unknown task kind {task_kind!r}")


__all__ = [
    "Conditioning",
    "FirstFrameConditioning",
    "ImageChannelConditioning",
    "prepare_conditioning",
]
