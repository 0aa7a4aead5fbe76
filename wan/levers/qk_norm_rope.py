"""Fused q/k RMS norm and rotary embedding lever: one memory pass where compiled diffusers code takes more.

In each self-attention, diffusers' Wan processor normalises q and k over all heads (``RMSNorm`` of
heads x head_dim) and then rotates interleaved pairs by the RoPE angles. Compiled, that is a looped
reduction that reads each row twice and gathers the pairs with stride 2: 1.32 ms per block at A14B's
480p shapes (53 ms a forward) for 1.34 GB of traffic, a fifth of the H200's bandwidth. Here one
Triton program per token row loads the row once, reduces, scales and rotates it in registers and
writes q or k in the (batch, tokens, heads, head_dim) layout the attention kernels take: 0.26 ms per
tensor, 21 ms a forward, and the forward 0.9% faster (docs/PERFORMANCE.md). Same math, one rounding
to the tensor's dtype after the norm (as a fused norm does) and one after the rotation: 0.235% from
an fp32 computation, as eager PyTorch's (``docs/results/probe_fused_kernels_h200.json``). Off CUDA
(or without Triton) the op runs diffusers' own formulas, so CPU runs are bit-identical to the
unfused processor.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import WanAttnProcessor, _get_qkv_projections

logger = logging.getLogger(__name__)

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs: the op falls back to PyTorch
    triton = None

if triton is not None:

    @triton.jit
    def _norm_rope_rows(
        x_ptr,
        w_ptr,
        cos_ptr,
        sin_ptr,
        out_ptr,
        tokens,
        stride_xb,
        stride_xl,
        stride_fl,
        stride_fd,
        eps,
        DIM: tl.constexpr,
        HALF_HEAD: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """One token row: RMS over the row, times the weight, then each (even, odd) pair rotated."""
        row = tl.program_id(0)
        b = row // tokens
        t = row % tokens
        pair = tl.arange(0, BLOCK)
        mask = pair < DIM // 2
        x_row = x_ptr + b * stride_xb + t * stride_xl
        even = tl.load(x_row + 2 * pair, mask=mask, other=0.0).to(tl.float32)
        odd = tl.load(x_row + 2 * pair + 1, mask=mask, other=0.0).to(tl.float32)
        inv_rms = tl.rsqrt((tl.sum(even * even, 0) + tl.sum(odd * odd, 0)) / DIM + eps)
        w_even = tl.load(w_ptr + 2 * pair, mask=mask, other=0.0).to(tl.float32)
        w_odd = tl.load(w_ptr + 2 * pair + 1, mask=mask, other=0.0).to(tl.float32)
        # the norm's output is rounded to the tensor's dtype before the rotation, as between the two modules
        even = (even * inv_rms * w_even).to(out_ptr.dtype.element_ty).to(tl.float32)
        odd = (odd * inv_rms * w_odd).to(out_ptr.dtype.element_ty).to(tl.float32)
        freq = t * stride_fl + 2 * (pair % HALF_HEAD) * stride_fd
        cos = tl.load(cos_ptr + freq, mask=mask, other=0.0)  # freqs_cos[..., 0::2]
        sin = tl.load(sin_ptr + freq + stride_fd, mask=mask, other=0.0)  # freqs_sin[..., 1::2]
        out_row = out_ptr + row * DIM
        tl.store(out_row + 2 * pair, (even * cos - odd * sin).to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(out_row + 2 * pair + 1, (even * sin + odd * cos).to(out_ptr.dtype.element_ty), mask=mask)


def _triton_norm_rope(x, weight, cos, sin, heads: int, eps: float) -> torch.Tensor:
    batch, tokens, dim = x.shape
    out = torch.empty(batch, tokens, heads, dim // heads, device=x.device, dtype=x.dtype)
    block = triton.next_power_of_2(dim // 2)
    _norm_rope_rows[(batch * tokens,)](
        x,
        weight,
        cos,
        sin,
        out,
        tokens,
        x.stride(0),
        x.stride(1),
        cos.stride(1),
        cos.stride(3),
        eps,
        DIM=dim,
        HALF_HEAD=dim // heads // 2,
        BLOCK=block,
        num_warps=8 if block >= 2048 else 4,
    )
    return out


def reference_norm_rope(x, weight, cos, sin, heads: int, eps: float) -> torch.Tensor:
    """diffusers' Wan self-attention math: ``RMSNorm`` over the row, split into heads, interleaved RoPE."""
    x = F.rms_norm(x, (x.shape[-1],), weight, eps).unflatten(2, (heads, -1))
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out.type_as(x)


def kernel_runs(x: torch.Tensor, cos: torch.Tensor) -> bool:
    """Whether the Triton kernel takes these tensors (a CUDA row with unit stride, fp32 angles)."""
    return triton is not None and x.is_cuda and x.stride(2) == 1 and cos.dtype == torch.float32


@torch.library.custom_op("wan::qk_norm_rope", mutates_args=())
def qk_norm_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    heads: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k [B, L, heads * head_dim] -> normalised and rotated, each [B, L, heads, head_dim].

    A custom op, so regional compilation keeps it as one call instead of tracing (and re-splitting) it.
    """
    norm_rope = _triton_norm_rope if kernel_runs(q, cos) and kernel_runs(k, cos) else reference_norm_rope
    return norm_rope(q, q_weight, cos, sin, heads, eps), norm_rope(k, k_weight, cos, sin, heads, eps)


@qk_norm_rope.register_fake
def _(q, k, q_weight, k_weight, cos, sin, heads, eps):
    def shaped(x):
        return x.new_empty(*x.shape[:2], heads, x.shape[2] // heads)

    return shaped(q), shaped(k)


class NormRopeProcessor(WanAttnProcessor):
    """diffusers' Wan attention processor with a self-attention's q/k norm and RoPE as one ``qk_norm_rope``.

    Cross-attention (no RoPE) runs diffusers' own code. The attention call is diffusers' dispatcher with
    the processor's backend and context-parallel config, as in the processor it replaces.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None or rotary_emb is None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query, key = qk_norm_rope(
            query, key, attn.norm_q.weight, attn.norm_k.weight, *rotary_emb, attn.heads, _eps(attn.norm_q, query)
        )
        out = dispatch_attention_fn(
            query,
            key,
            value.unflatten(2, (attn.heads, -1)),
            attn_mask=attention_mask,
            dropout_p=0.0,
            is_causal=False,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def _eps(norm: torch.nn.RMSNorm, x: torch.Tensor) -> float:
    return norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps


def _takes(attn: torch.nn.Module) -> bool:
    """A self-attention whose q/k norms are affine ``RMSNorm``s over all heads (Wan's ``rms_norm_across_heads``),
    with one epsilon (the op takes one for both)."""
    norms = (getattr(attn, "norm_q", None), getattr(attn, "norm_k", None))
    return (
        not getattr(attn, "is_cross_attention", True)
        and type(attn.processor) is WanAttnProcessor
        and all(isinstance(n, torch.nn.RMSNorm) and n.weight is not None for n in norms)
        and norms[0].eps == norms[1].eps
    )


def fuse_expert_norm_rope(expert: torch.nn.Module) -> int:
    """Give every self-attention of ``expert`` a ``NormRopeProcessor``, keeping its backend; returns how many."""
    swapped = 0
    for attn in expert.modules():
        if _takes(attn):
            processor = NormRopeProcessor()
            processor._attention_backend = attn.processor._attention_backend
            processor._parallel_config = attn.processor._parallel_config
            attn.set_processor(processor)
            swapped += 1
    return swapped


def fuse_norm_rope(pipe) -> None:
    """The fused q/k norm + RoPE in both experts' self-attentions."""
    for name, expert in pipe.experts.items():
        count = fuse_expert_norm_rope(expert)
        logger.info("fused q/k norm and RoPE in %d self-attentions of the %s expert", count, name)
