"""VAE precision lever: decode in bfloat16 instead of the released float32.

The decode is outside the denoising loop but not free: ~3 s of a 480p 81-frame A14B run on an H200,
5% of ``--preset fast``'s 66 s; in bfloat16 it takes 1.8 s (docs/PERFORMANCE.md). On t2v-tiny a
bfloat16 decode of the same latents stays 56 dB from the float32 one (docs/QUALITY.md), so ``fast``
takes it, while ``exact`` and the default keep float32. The latents are denormalised in float32 first
(``WanT2V.decode``), so only the VAE's own layers round.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


@torch.no_grad()
def cast_vae(pipe, name: str) -> None:
    """Cast the pipeline's VAE to ``name`` (a torch dtype's name, checked by the lever) where it lives now, tensor by
    tensor.

    Placement has already put it in page-locked memory if it visits the GPU (``wan.placement``); a
    plain ``.to(dtype)`` would drop that, so a pinned tensor's cast is pinned again.
    """
    dtype = getattr(torch, name)
    for tensor in (*pipe.components.vae.parameters(), *pipe.components.vae.buffers()):
        if tensor.is_floating_point() and tensor.dtype != dtype:
            cast = tensor.data.to(dtype)
            tensor.data = cast.pin_memory() if tensor.data.is_pinned() else cast
    logger.info("VAE decodes in %s", name)
