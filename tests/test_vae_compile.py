"""The VAE kernels lever: channels-last convolutions and compiled norms give the same encode and decode."""

import copy

import torch
from tiny_models import as_components

from wan.levers import Levers, apply_levers
from wan.levers.presets import resolve_levers
from wan.levers.vae_compile import channels_last

CPU = torch.device("cpu")


def test_channels_last_lays_out_every_3d_convolution_and_nothing_else(parts):
    vae = copy.deepcopy(parts.vae)
    convs = [p for p in vae.parameters() if p.dim() == 5]
    assert channels_last(vae) == len(convs) > 0
    assert all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in convs)
    assert all(p.is_contiguous() for p in vae.parameters() if p.dim() != 5)


def test_the_lever_keeps_the_encode_and_decode_of_float32(test_config, parts):
    from wan.text2video import WanT2V

    plain = WanT2V(test_config, as_components(copy.deepcopy(parts)))
    fast = WanT2V(test_config, as_components(copy.deepcopy(parts)))
    apply_levers(fast, Levers(vae_kernels=True))  # asked for explicitly it runs on a CPU too
    norms = [m for m in fast.components.vae.modules() if type(m).__name__ == "WanRMS_norm"]
    assert norms and all(m._compiled_call_impl is not None for m in norms)
    latents = torch.randn(1, parts.vae.config.z_dim, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    video = plain.decode(latents)
    torch.testing.assert_close(fast.decode(latents), video, rtol=0, atol=1e-4)
    with torch.no_grad():
        pixels = video[None] * 0.5
        encoded = [p.components.vae.encode(pixels).latent_dist.mode() for p in (plain, fast)]
    torch.testing.assert_close(encoded[1], encoded[0], rtol=0, atol=1e-4)


def test_the_fast_preset_takes_it_on_a_gpu_and_leaves_it_out_elsewhere():
    levers, notes = resolve_levers("fast", {}, CPU)
    assert not levers.vae_kernels
    assert "preset fast: vae_kernels left out on cpu (it pays off on a GPU only)" in notes
    assert resolve_levers(None, {"vae_kernels": True}, CPU)[0].vae_kernels  # the flag wins anywhere
    assert resolve_levers("lightning", {"vae_kernels": True}, CPU)[0].vae_kernels
    for preset in ("exact", "lightning"):  # exact keeps the released VAE; lightning compiles nothing
        levers, notes = resolve_levers(preset, {}, CPU)
        assert not levers.vae_kernels and not any("vae_kernels" in n for n in notes)
