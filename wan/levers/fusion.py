"""Projection-fusion lever: one GEMM for an attention's q/k/v (self-attention) or k/v (cross-attention).

diffusers' ``fuse_projections`` builds the concatenated layer but keeps the separate ones beside it,
which at A14B holds 21 GB of weights twice. Here each attention is fused and its separate layers
dropped at once, so memory holds one copy plus one layer's worth while fusing. The same dot
products in one wider GEMM: the video stays within bf16 rounding (the GEMM's kernel may change).
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

SEPARATE = {False: ("to_q", "to_k", "to_v"), True: ("to_k", "to_v")}  # by is_cross_attention


@torch.no_grad()
def fuse_expert_projections(expert: torch.nn.Module) -> int:
    """Fuse every attention of ``expert`` in place and drop the separate layers; returns how many were fused."""
    from diffusers.hooks.group_offloading import _is_group_offload_enabled, _maybe_remove_and_reapply_group_offloading
    from diffusers.models.attention import AttentionModuleMixin

    fused = 0
    for module in expert.modules():
        if not isinstance(module, AttentionModuleMixin) or module.fused_projections:
            continue
        module.fuse_projections()
        for name in SEPARATE[module.is_cross_attention]:
            delattr(module, name)
        fused += 1
    if fused and _is_group_offload_enabled(expert):
        _maybe_remove_and_reapply_group_offloading(expert)  # streamed groups must hold the new layers
    return fused


def fuse_projections(pipe) -> None:
    """Fuse the attention projections of both experts."""
    for name, expert in pipe.experts.items():
        count = fuse_expert_projections(expert)
        logger.info("fused the attention projections of %d layers in the %s expert", count, name)
