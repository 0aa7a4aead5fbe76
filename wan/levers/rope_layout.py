"""Rotary-layout lever: self-attention's RoPE pairs stored as two contiguous halves of each head.

Wan's RoPE rotates channel pairs (0, 1), (2, 3), ... of every head. Read that way, the fused
query/key norm-and-rotate kernel makes stride-2 loads and stores: at A14B it was the slowest
elementwise kernel of a forward (54 ms of 2.45 s on an H200). Attention scores are dot products over
each head's channels, so permuting the query and key channels of every head the same way leaves them
unchanged; the RMS norm across heads is a sum of squares, unchanged too. This lever permutes the
self-attention query/key projections (and their norm weights) once so that each head holds its even
channels then its odd ones, and installs a processor that rotates the two contiguous halves. Values,
cross-attention and the output are untouched: the video stays within bf16 rounding (the attention
kernel sums the dot products in another order).
"""

from __future__ import annotations

import logging

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import WanAttnProcessor, _get_qkv_projections

logger = logging.getLogger(__name__)


def half_split_order(heads: int, head_dim: int) -> torch.Tensor:
    """Channel order that puts each head's even channels first, then its odd ones."""
    within = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    return (torch.arange(heads)[:, None] * head_dim + within).flatten()


def rotate_halves(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's RoPE on (batch, tokens, heads, head_dim) channels laid out by ``half_split_order``.

    The same products and sums as diffusers' interleaved form, element for element.
    """
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class HalfSplitRopeProcessor(WanAttnProcessor):
    """diffusers' Wan self-attention with RoPE on half-split channels (text-to-video: no image keys)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
        if rotary_emb is not None:
            query, key = rotate_halves(query, *rotary_emb), rotate_halves(key, *rotary_emb)
        hidden_states = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=0.0,
            is_causal=False,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](hidden_states))


@torch.no_grad()
def split_rope_layout(expert: torch.nn.Module) -> int:
    """Permute every self-attention of ``expert`` to the half-split layout; returns how many."""
    done = 0
    for block in expert.blocks:
        attn = block.attn1
        if isinstance(attn.processor, HalfSplitRopeProcessor):
            continue
        if attn.fused_projections or attn.add_k_proj is not None:
            raise ValueError("split the RoPE layout before fusing projections, on a text-to-video expert")
        order = half_split_order(attn.heads, attn.inner_dim // attn.heads).to(attn.to_q.weight.device)
        for layer in (attn.to_q, attn.to_k):
            layer.weight.copy_(layer.weight[order])
            layer.bias.copy_(layer.bias[order])
        for norm in (attn.norm_q, attn.norm_k):
            norm.weight.copy_(norm.weight[order])
        processor = HalfSplitRopeProcessor()
        processor.__dict__.update(attn.processor.__dict__)  # keeps the attention backend chosen before
        attn.set_processor(processor)
        done += 1
    return done


def split_rope(pipe) -> None:
    """The half-split RoPE layout in both experts."""
    for name, expert in pipe.experts.items():
        count = split_rope_layout(expert)
        logger.info("RoPE pairs split into halves in %d self-attention layers of the %s expert", count, name)
