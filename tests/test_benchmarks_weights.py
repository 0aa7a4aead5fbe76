"""benchmarks.weights: random parts with the dtypes a real load gives them."""

from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel
from transformers import UMT5Config

from benchmarks.weights import A14B_CONFIG, TINY_UMT5, UMT5_XXL, build_expert, build_text_encoder, expert_config

SMALL = dict(A14B_CONFIG, num_attention_heads=4, attention_head_dim=32, ffn_dim=320, text_dim=64, num_layers=2)


def test_text_encoder_is_umt5_xxl_in_bf16_with_fp32_wo():
    config = UMT5Config(**UMT5_XXL)
    assert (config.dense_act_fn, config.is_gated_act, config.vocab_size) == ("gelu_new", True, 256384)
    tiny = dict(UMT5_XXL, **TINY_UMT5, vocab_size=64)
    model = build_text_encoder(tiny, torch.device("cpu"), torch.bfloat16, 0)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert all((dtype == torch.float32) == (".wo." in name) for name, dtype in dtypes.items())


def test_build_expert_matches_from_pretrained_dtypes(tmp_path):
    """bf16 with the fp32 modules that ``from_pretrained(torch_dtype=bfloat16)`` keeps, and the same RoPE tables."""
    built = build_expert(SMALL, torch.device("cpu"), torch.bfloat16, 0, 0.02)
    build_expert(SMALL, torch.device("cpu"), torch.float32, 0, 0.02).save_pretrained(tmp_path)
    loaded = WanTransformer3DModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)

    def dtypes(model):
        return {n: t.dtype for n, t in [*model.named_parameters(), *model.named_buffers()]}

    assert dtypes(built) == dtypes(loaded)
    assert torch.float32 in set(dtypes(built).values()) and torch.bfloat16 in set(dtypes(built).values())
    torch.testing.assert_close(built.rope.freqs_cos, loaded.rope.freqs_cos, rtol=0, atol=0)
    assert not built.training and not any(p.requires_grad for p in built.parameters())


def test_expert_config_is_a14b_unless_tiny():
    assert expert_config(False, None) == A14B_CONFIG
    tiny = expert_config(True, None)
    assert tiny["num_layers"] == 2 and tiny["num_attention_heads"] < A14B_CONFIG["num_attention_heads"]
    assert expert_config(True, 3)["num_layers"] == 3
