"""VAE kernels lever: the Wan VAE's convolutions channels-last and its RMS norms compiled.

The VAE runs frame by frame through causal 3D convolutions with an RMS norm (computed in float32) and
a SiLU between them. At 4 steps its image encode and video decode are a quarter of an A14B run, and
two things cost most of it:

- cuDNN's fast 3D convolution kernels want channels-last weights; with the default layout each
  convolution transposes its operands first.
- Each eager RMS norm is eight passes over a large activation (cast up, norm, divide, cast down, scale,
  gain, bias); compiled it is one.

Measured on one H100 at 480p, 81 frames, bfloat16 (``scripts/bench_vae.py``,
``docs/results/bench_vae_480p_h100.json``): decode 2.06 s -> 1.37 s, encode 1.27 s -> 0.83 s, the
video as close to float32's as plain bfloat16's. Whole blocks do not compile cleanly: each holds its own
feature-cache slot and chunk shapes, and symbolic shapes trip inductor on the padded convolutions.
"""

from __future__ import annotations

import logging

import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

logger = logging.getLogger(__name__)

NORM_VARIANTS = 64
"""Compiled variants the norms may need: they specialise on channel count and layout (about a dozen in
an encode and a decode), more than dynamo's default cache of 8 holds, where it would fall back to eager."""


@torch.no_grad()
def channels_last(vae: torch.nn.Module) -> int:
    """Lay every 3D convolution weight of ``vae`` out channels-last, keeping page-locked memory pinned;
    returns how many. Their outputs follow the layout, so the activations need no conversion."""
    weights = [p for p in vae.parameters() if p.dim() == 5]
    for weight in weights:
        laid = weight.data.contiguous(memory_format=torch.channels_last_3d)
        weight.data = laid.pin_memory() if weight.data.is_pinned() else laid
    return len(weights)


def compile_norms(vae: torch.nn.Module) -> int:
    """Compile every RMS norm of ``vae``; returns how many."""
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, NORM_VARIANTS)
    norms = [m for m in vae.modules() if isinstance(m, WanRMS_norm)]
    for norm in norms:
        norm.compile(dynamic=True)
    return len(norms)


def speed_up_vae(pipe) -> None:
    """Both changes on the pipeline's VAE, after its dtype is set (``wan.levers.vae_precision``)."""
    vae = pipe.components.vae
    convs, norms = channels_last(vae), compile_norms(vae)
    logger.info("VAE: %d convolutions channels-last, %d RMS norms compiled", convs, norms)
