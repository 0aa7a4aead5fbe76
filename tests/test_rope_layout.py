"""The half-split RoPE layout keeps the video: same rotation, same scores, other channel order."""

import copy

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from tiny_models import as_components

from wan.levers import Levers, apply_levers
from wan.levers.fusion import fuse_expert_projections
from wan.levers.rope_layout import HalfSplitRopeProcessor, half_split_order, rotate_halves, split_rope_layout
from wan.text2video import GenerationSettings, WanT2V

SETTINGS = GenerationSettings(prompt="a blue circle moving up", seed=3, size="32*32", frame_num=9, sample_steps=6)


def interleaved_rope(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """diffusers' Wan rotation of pairs (0, 1), (2, 3), ... written out as the reference."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).type_as(x)


def test_order_puts_each_heads_even_channels_first():
    assert half_split_order(2, 4).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_rotating_halves_is_the_interleaved_rotation_reordered():
    heads, head_dim = 3, 12
    rope = WanRotaryPosEmbed(head_dim, (1, 2, 2), max_seq_len=64)
    freqs_cos, freqs_sin = rope(torch.zeros(1, 4, 3, 8, 8))
    x = torch.randn(1, freqs_cos.shape[1], heads, head_dim)
    within = half_split_order(1, head_dim)
    expected = interleaved_rope(x, freqs_cos, freqs_sin)[..., within]
    assert torch.equal(rotate_halves(x[..., within], freqs_cos, freqs_sin), expected)


@pytest.fixture(scope="module")
def baseline(test_config, parts) -> torch.Tensor:
    return WanT2V(test_config, as_components(copy.deepcopy(parts))).generate(SETTINGS, progress=False).video


@pytest.mark.parametrize("levers", [Levers(split_rope=True), Levers(split_rope=True, fuse_projections=True)])
def test_split_layout_keeps_the_video(test_config, parts, baseline, levers):
    pipe = WanT2V(test_config, as_components(copy.deepcopy(parts)))
    apply_levers(pipe, levers)
    assert all(isinstance(b.attn1.processor, HalfSplitRopeProcessor) for e in pipe.experts.values() for b in e.blocks)
    torch.testing.assert_close(pipe.generate(SETTINGS, progress=False).video, baseline, rtol=1e-5, atol=1e-5)


def test_the_layout_keeps_the_chosen_attention_backend_and_applies_once(parts):
    expert = copy.deepcopy(parts.high_noise_model)
    expert.set_attention_backend("_native_math")
    weights = expert.blocks[0].attn1.to_q.weight.clone()
    assert split_rope_layout(expert) == len(expert.blocks)
    assert split_rope_layout(expert) == 0  # a second call leaves the permuted weights alone
    processor = expert.blocks[0].attn1.processor
    assert processor._attention_backend == "_native_math"
    head_dim = expert.blocks[0].attn1.inner_dim // expert.blocks[0].attn1.heads
    order = half_split_order(expert.blocks[0].attn1.heads, head_dim)
    assert torch.equal(expert.blocks[0].attn1.to_q.weight, weights[order])


def test_layout_after_fusion_is_refused(parts):
    expert = copy.deepcopy(parts.high_noise_model)
    fuse_expert_projections(expert)
    with pytest.raises(ValueError, match="before fusing projections"):
        split_rope_layout(expert)
