"""The fused q/k norm + RoPE lever: swaps only self-attention processors, keeps the output and the backend."""

import copy
import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor
from test_fusion import forward

from wan.levers import qk_norm_rope
from wan.levers.fusion import fuse_expert_projections


def strided_inputs(heads: int = 4, head_dim: int = 16, tokens: int = 6):
    """q and k as slices of one fused q/k/v output, angles strided along the tokens (as half frames make them)."""
    generator = torch.Generator().manual_seed(0)
    q, k, _ = torch.randn(2, tokens, 3 * heads * head_dim, generator=generator).chunk(3, dim=-1)
    weight = 1 + 0.1 * torch.randn(heads * head_dim, generator=generator)
    angles = torch.randn(2 * tokens, head_dim // 2, generator=generator, dtype=torch.float64)
    pairs = (f(angles).repeat_interleave(2, -1).float() for f in (torch.cos, torch.sin))
    cos, sin = (p.view(1, 2 * tokens, 1, head_dim)[:, ::2] for p in pairs)
    return q, k, weight, cos, sin, heads


def test_self_attentions_get_the_fused_processor_and_the_output_stays(parts):
    expert = copy.deepcopy(parts.high_noise_model)
    before = forward(expert)
    assert qk_norm_rope.fuse_expert_norm_rope(expert) == len(expert.blocks)
    assert qk_norm_rope.fuse_expert_norm_rope(expert) == 0  # already swapped
    block = expert.blocks[0]
    assert isinstance(block.attn1.processor, qk_norm_rope.NormRopeProcessor)
    assert type(block.attn2.processor) is WanAttnProcessor  # cross-attention has no RoPE: diffusers' own
    assert torch.equal(forward(expert), before)  # off CUDA the op runs diffusers' formulas


def test_attentions_whose_norms_differ_in_epsilon_are_left_alone(parts):
    expert = copy.deepcopy(parts.high_noise_model)
    expert.blocks[0].attn1.norm_k.eps = 1e-3  # the op takes one epsilon for q and k
    assert qk_norm_rope.fuse_expert_norm_rope(expert) == len(expert.blocks) - 1
    assert type(expert.blocks[0].attn1.processor) is WanAttnProcessor


def test_with_fused_projections_the_output_stays(parts):
    expert = copy.deepcopy(parts.high_noise_model)
    before = forward(expert)
    fuse_expert_projections(expert)
    qk_norm_rope.fuse_expert_norm_rope(expert)
    torch.testing.assert_close(forward(expert), before, rtol=1e-5, atol=1e-6)


def test_the_new_processors_keep_the_backend_and_parallel_config(parts):
    expert = copy.deepcopy(parts.high_noise_model)
    expert.set_attention_backend("native")
    old = expert.blocks[0].attn1.processor
    old._parallel_config = marker = object()
    qk_norm_rope.fuse_expert_norm_rope(expert)
    new = expert.blocks[0].attn1.processor
    assert new._attention_backend == old._attention_backend and new._parallel_config is marker


def test_the_op_matches_its_fake_on_strided_inputs():
    q, k, weight, cos, sin, heads = strided_inputs()
    torch.library.opcheck(qk_norm_rope.qk_norm_rope, (q, k, weight, 2 * weight, cos, sin, heads, 1e-6))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (its interpreter runs on the CPU)")
def test_the_triton_kernel_matches_the_reference_in_the_interpreter():
    script = (
        "import torch, test_qk_norm_rope as t\n"
        "from wan.levers import qk_norm_rope as m\n"
        "q, k, w, cos, sin, heads = t.strided_inputs()\n"
        "for x in (q, q.bfloat16()):\n"
        "    ref = m.reference_norm_rope(x, w.to(x.dtype), cos, sin, heads, 1e-6).float()\n"
        "    out = m._triton_norm_rope(x, w.to(x.dtype), cos, sin, heads, 1e-6).float()\n"
        "    tol = 1e-5 if x.dtype == torch.float32 else 2e-2\n"
        "    assert (out - ref).abs().max() <= tol * ref.abs().max(), (x.dtype, (out - ref).abs().max())\n"
    )
    tests = os.path.dirname(__file__)
    path = [tests, os.path.dirname(tests), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
