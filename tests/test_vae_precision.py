"""The VAE precision lever: a bfloat16 decode close to the float32 one, float32 bit-for-bit as before."""

import copy

import pytest
import torch
from tiny_models import as_components

from wan.errors import ConfigError
from wan.levers import Levers, apply_levers, parse_levers
from wan.levers.presets import resolve_levers
from wan.text2video import WanT2V


@pytest.fixture(scope="module")
def latents(parts) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, parts.vae.config.z_dim, 3, 4, 4, generator=generator)


def pipe(test_config, parts) -> WanT2V:
    return WanT2V(test_config, as_components(copy.deepcopy(parts)))


def test_a_bfloat16_decode_stays_close_and_float32_is_unchanged(test_config, parts, latents):
    reference = pipe(test_config, parts).decode(latents)
    same = pipe(test_config, parts)
    apply_levers(same, Levers(vae_dtype="float32"))
    assert torch.equal(same.decode(latents), reference)
    bf16 = pipe(test_config, parts)
    apply_levers(bf16, Levers(vae_dtype="bfloat16"))
    assert bf16.components.vae.dtype == torch.bfloat16
    video = bf16.decode(latents)
    assert video.dtype == torch.float32 and video.shape == reference.shape
    assert 0 < (video - reference).abs().max() < 0.1  # rounded differently, not another picture


def test_the_fast_preset_decodes_in_bfloat16_unless_the_flag_says_otherwise():
    cpu = torch.device("cpu")
    assert resolve_levers("fast", {}, cpu)[0].vae_dtype == "bfloat16"
    assert resolve_levers("fast", {"vae_dtype": "float32"}, cpu)[0].vae_dtype == "float32"  # the flag wins
    assert resolve_levers("exact", {}, cpu)[0].vae_dtype is None  # the released float32


def test_an_unknown_vae_dtype_is_one_clear_error():
    with pytest.raises(ConfigError, match="unknown --vae_dtype 'float16'; choose one of: float32, bfloat16"):
        parse_levers("vae_dtype=float16")
