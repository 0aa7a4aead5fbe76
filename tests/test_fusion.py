"""Fused attention projections keep the output and hold one copy of the weights."""

import copy

import torch
from diffusers.hooks import apply_group_offloading

from wan.levers.fusion import fuse_expert_projections


def forward(expert, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, expert.config.in_channels, 3, 8, 8, generator=generator)
    context = torch.randn(1, 16, expert.config.text_dim, generator=generator)
    with torch.no_grad():
        return expert(latents, torch.tensor([700.0]), context, return_dict=False)[0]


def test_fusion_keeps_the_output_and_drops_the_separate_layers(parts):
    expert = copy.deepcopy(parts.high_noise_model)
    before, numel = forward(expert), sum(p.numel() for p in expert.parameters())
    assert fuse_expert_projections(expert) == 2 * len(expert.blocks)  # self- and cross-attention of every block
    assert fuse_expert_projections(expert) == 0  # already fused
    torch.testing.assert_close(forward(expert), before, rtol=1e-5, atol=1e-6)
    attn1, attn2 = expert.blocks[0].attn1, expert.blocks[0].attn2
    assert not any(hasattr(attn1, name) for name in ("to_q", "to_k", "to_v")) and hasattr(attn1, "to_qkv")
    assert hasattr(attn2, "to_q") and hasattr(attn2, "to_kv") and not hasattr(attn2, "to_k")
    assert sum(p.numel() for p in expert.parameters()) == numel  # one copy of every weight, not two


def test_fusion_under_block_streaming_moves_the_new_layers(parts):
    expert = copy.deepcopy(parts.high_noise_model)
    before = forward(expert)
    cpu = torch.device("cpu")
    apply_group_offloading(
        expert, onload_device=cpu, offload_device=cpu, offload_type="block_level", num_blocks_per_group=1
    )
    fuse_expert_projections(expert)
    torch.testing.assert_close(forward(expert), before, rtol=1e-5, atol=1e-6)
