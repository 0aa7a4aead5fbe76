"""wan.checkpoints.keymaps: official <-> diffusers names and configs, checked against facts of the release."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from accelerate import init_empty_weights
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from tiny_models import tiny_parts_official, umt5_hf_to_wan

from wan.checkpoints import (
    diffusers_to_wan_vae_key,
    transformer_config_from_wan,
    umt5_config_from_state_dict,
)
from wan.checkpoints.files import infos_of_state_dict
from wan.checkpoints.keymaps import (
    UMT5_TIED_KEY,
    WAN22_VAE_LATENTS_MEAN,
    umt5_hf_key_to_wan,
    umt5_wan_key_to_hf,
    vae_config_from_state_dict,
    wan_to_diffusers_vae_key,
)

PROMPT = "a red square moving left and a blue circle moving right"
A14B = {
    "_class_name": "WanModel", "dim": 5120, "eps": 1e-06, "ffn_dim": 13824, "freq_dim": 256, "in_dim": 16,
    "model_type": "t2v", "num_heads": 40, "num_layers": 40, "out_dim": 16, "text_len": 512,
}  # fmt: skip
"""An official T2V-A14B expert's config.json."""


@pytest.fixture(scope="module")
def tiny():
    return tiny_parts_official(seed=0)


def params_b(config: dict) -> float:
    with init_empty_weights():
        model = WanTransformer3DModel(**config)
    return round(sum(p.numel() for p in model.parameters()) / 1e9, 2)


def wan_t5_reference(sd: dict, ids: torch.Tensor, max_dist: int = 128, eps: float = 1e-6) -> torch.Tensor:
    """Wan's T5 encoder, written from its definition, on Wan key names (no padding)."""
    num_buckets, heads = sd["blocks.0.pos_embedding.embedding.weight"].shape
    layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    length = ids.shape[1]
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]  # key - query
    half = num_buckets // 2
    exact = half // 2
    far = exact + (torch.log(rel.abs().clamp(min=1).float() / exact) / math.log(max_dist / exact) * (half - exact))
    buckets = (rel > 0).long() * half + torch.where(rel.abs() < exact, rel.abs(), far.long().clamp(max=half - 1))

    def rms(x, w):
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    x = sd["token_embedding.weight"][ids]
    for i in range(layers):
        p = f"blocks.{i}."
        h = rms(x, sd[p + "norm1.weight"])
        q, k, v = (
            (h @ sd[p + f"attn.{n}.weight"].T).unflatten(-1, (heads, -1)).transpose(1, 2) for n in ("q", "k", "v")
        )
        bias = sd[p + "pos_embedding.embedding.weight"][buckets].permute(2, 0, 1)[None]
        attn = torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1)  # T5: no 1/sqrt(d) scaling
        x = x + (attn @ v).transpose(1, 2).flatten(2) @ sd[p + "attn.o.weight"].T
        h = rms(x, sd[p + "norm2.weight"])
        gated = F.gelu(h @ sd[p + "ffn.gate.0.weight"].T, approximate="tanh")
        x = x + (gated * (h @ sd[p + "ffn.fc1.weight"].T)) @ sd[p + "ffn.fc2.weight"].T
    return rms(x, sd["norm.weight"])


def test_umt5_names_round_trip(tiny):
    hf = tiny.text_encoder.state_dict()
    wan = {umt5_hf_key_to_wan(k): k for k in hf if k != UMT5_TIED_KEY}
    assert None not in wan and "token_embedding.weight" in wan and "blocks.1.ffn.gate.0.weight" in wan
    assert all(umt5_wan_key_to_hf(name) == key for name, key in wan.items())
    assert set(wan.values()) | {UMT5_TIED_KEY} == set(hf)  # every HF key covered, the tied embedding included
    assert umt5_hf_key_to_wan(UMT5_TIED_KEY) is None and umt5_wan_key_to_hf("blocks.0.attn.qkv.weight") is None


def test_umt5_mapping_matches_wan_semantics(tiny):
    wan = umt5_hf_to_wan(tiny.text_encoder.state_dict())
    ids = tiny.tokenizer([PROMPT], return_tensors="pt").input_ids
    assert ids.shape[1] > 8  # long enough to reach the logarithmic buckets
    with torch.no_grad():
        expected = wan_t5_reference(wan, ids)
        got = tiny.text_encoder(ids).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_configs_at_release_sizes():
    config = transformer_config_from_wan(A14B)
    assert config["num_attention_heads"] == 40 and config["attention_head_dim"] == 128 and config["text_dim"] == 4096
    assert params_b(config) == 14.29
    i2v = transformer_config_from_wan({**A14B, "model_type": "i2v", "in_dim": 36})  # Wan2.2 I2V-A14B: no CLIP
    assert (i2v["in_channels"], i2v["out_channels"]) == (36, 16) and params_b(i2v) == 14.29
    ti2v = transformer_config_from_wan(
        {**A14B, "model_type": "ti2v", "dim": 3072, "num_heads": 24, "num_layers": 30, "ffn_dim": 14336}
        | {"in_dim": 48, "out_dim": 48}
    )
    assert ti2v["attention_head_dim"] == 128 and params_b(ti2v) == 5.0
    meta = {"token_embedding.weight": torch.empty(256384, 4096, device="meta"), "norm.weight": torch.empty(4096)}
    for i in range(24):
        p = f"blocks.{i}."
        meta[p + "pos_embedding.embedding.weight"] = torch.empty(32, 64, device="meta")
        meta[p + "attn.q.weight"] = torch.empty(4096, 4096, device="meta")
        meta[p + "ffn.fc1.weight"] = torch.empty(10240, 4096, device="meta")
    t5 = umt5_config_from_state_dict(meta)
    assert (t5.vocab_size, t5.d_model, t5.num_layers, t5.num_heads, t5.d_kv, t5.d_ff) == (
        256384, 4096, 24, 64, 64, 10240,
    )  # fmt: skip
    assert (t5.relative_attention_num_buckets, t5.relative_attention_max_distance) == (32, 128)
    with pytest.raises(ValueError, match="t2v, i2v, ti2v"):
        transformer_config_from_wan({**A14B, "model_type": "s2v"})


# ---------------------------------------------------------------------------------------------- Wan2.2 VAE

WAN22_VAE = {
    "base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "is_residual": True, "in_channels": 12,
    "out_channels": 12, "patch_size": 2, "scale_factor_temporal": 4, "scale_factor_spatial": 16,
}  # fmt: skip
"""The released Wan2.2 VAE as diffusers configures it (Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json)."""


@pytest.mark.parametrize(
    ("wan", "diffusers"),
    [  # each stage of the Wan2.2 VAE is one block: its resnets, then its resample, in one numbered list
        ("encoder.downsamples.1.downsamples.0.residual.2.weight", "encoder.down_blocks.1.resnets.0.conv1.weight"),
        ("encoder.downsamples.1.downsamples.0.shortcut.bias", "encoder.down_blocks.1.resnets.0.conv_shortcut.bias"),
        ("encoder.downsamples.2.downsamples.2.time_conv.weight", "encoder.down_blocks.2.downsampler.time_conv.weight"),
        ("decoder.upsamples.0.upsamples.2.residual.3.gamma", "decoder.up_blocks.0.resnets.2.norm2.gamma"),
        ("decoder.upsamples.1.upsamples.3.resample.1.bias", "decoder.up_blocks.1.upsampler.resample.1.bias"),
        ("decoder.middle.1.to_qkv.weight", "decoder.mid_block.attentions.0.to_qkv.weight"),
        ("conv2.weight", "post_quant_conv.weight"),
    ],
)
def test_wan22_vae_names(wan, diffusers):
    assert wan_to_diffusers_vae_key(wan) == diffusers
    assert diffusers_to_wan_vae_key(diffusers, residual=True) == wan


def test_wan22_vae_at_release_size():
    """Every tensor of the released VAE has a Wan name, and those shapes give back the released config."""
    with init_empty_weights():
        vae = AutoencoderKLWan(**WAN22_VAE)
    wan = {diffusers_to_wan_vae_key(k, residual=True): v for k, v in vae.state_dict().items()}
    assert len(wan) == len(vae.state_dict())
    config = vae_config_from_state_dict(infos_of_state_dict(wan, Path("Wan2.2_VAE.pth")))
    assert {k: v for k, v in config.items() if k in WAN22_VAE} == WAN22_VAE
    assert config["latents_mean"] == list(WAN22_VAE_LATENTS_MEAN) and len(config["latents_std"]) == 48
    wan21 = AutoencoderKLWan(base_dim=8).state_dict()
    assert vae_config_from_state_dict(infos_of_state_dict(
        {diffusers_to_wan_vae_key(k): v for k, v in wan21.items()}, Path("Wan2.1_VAE.pth")
    )) == {"base_dim": 8, "z_dim": 16}  # fmt: skip
