"""Pure functions shared by the image tasks: the image latent, the frame mask, per-token timesteps."""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import get_module_execution_device
from torch import Tensor


@torch.no_grad()
def encode_normalised(vae: torch.nn.Module, video: Tensor, *, device: torch.device | str, dtype: torch.dtype) -> Tensor:
    """VAE latent of ``video`` [B, 3, F, H, W] in [-1, 1]: the posterior's mode, per-channel normalised.

    As diffusers' image-to-video pipelines: the video runs in the VAE's dtype on its execution device;
    the mode is cast to ``dtype`` and normalised as ``(z - mean) * (1 / std)``.
    """
    video = video.to(device=get_module_execution_device(vae), dtype=vae.dtype)
    z = vae.encode(video).latent_dist.mode().to(device=device, dtype=dtype)
    channels = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, channels, 1, 1, 1).to(z.device, z.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, channels, 1, 1, 1).to(z.device, z.dtype)
    return (z - mean) * inv_std


def latent_frame_mask(known: Tensor, temporal_stride: int) -> Tensor:
    """[stride, T]: which pixel frames are given, regrouped by latent frame (the i2v mask channels).

    ``known`` [F] (F = stride * (T - 1) + 1) marks the given pixel frames. The first pixel frame is
    repeated ``stride`` times so that every latent frame covers ``stride`` pixel frames; channel ``c``
    of latent frame ``t`` is pixel frame ``stride * t + c`` of that padded sequence.
    """
    padded = torch.cat([known[:1].repeat(temporal_stride), known[1:]]).float()
    return padded.view(-1, temporal_stride).transpose(0, 1)


def first_frame_mask(latent_frames: int, height: int, width: int, *, given: bool, device=None) -> Tensor:
    """[1, 1, T, h, w] float32: 0 where the latent is given (frame 0 when ``given``), 1 where it is generated."""
    mask = torch.ones(1, 1, latent_frames, height, width, dtype=torch.float32, device=device)
    if given:
        mask[:, :, 0] = 0
    return mask


def token_timesteps(mask: Tensor, t: float, patch: tuple[int, int], batch: int) -> Tensor:
    """[batch, tokens]: ``t`` per token scaled by the mask at each patch's first pixel (0 for given tokens)."""
    per_token = (mask[0, 0][:, :: patch[0], :: patch[1]] * t).flatten()
    return per_token.unsqueeze(0).expand(batch, -1)


def select_frames(tensor: Tensor, frames: int) -> Tensor:
    """The first ``frames`` of 0, 2, 4, ... (half-frame) or all frames of ``tensor`` [B, C, T, h, w]."""
    full = tensor.shape[2]
    if frames == full:
        return tensor
    kept = list(range(0, full, 2))
    if frames != len(kept):
        raise ValueError(f"a conditioning of {full} latent frames has no {frames}-frame form (full or half only)")
    return tensor[:, :, kept]
