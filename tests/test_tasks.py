"""The task conditionings against diffusers' own pipelines on tiny random checkpoints.

The oracle for I2V-A14B is ``WanImageToVideoPipeline`` (two experts, boundary_ratio); for TI2V-5B it is
``WanImageToVideoPipeline(expand_timesteps=True)`` with an image and ``WanPipeline(expand_timesteps=True)``
without. I2V runs in the project's own loop (``WanT2V.sample``); TI2V (one expert, which that loop does not
take yet) in a minimal loop built from the project's scheduler, step plan and guidance. Every expert
call's input and timestep, the final latent and the 8-bit video must be equal to the peer's.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanPipeline, WanTransformer3DModel
from PIL import Image
from tiny_models import tiny_parts

from wan.checkpoints import WanComponents
from wan.config import HIGH, LOW, load_task_config
from wan.errors import ConfigError
from wan.guidance import guided_velocity
from wan.image import image_tensor
from wan.plan import plan_steps
from wan.settings import GenerationSettings
from wan.solvers import make_scheduler
from wan.tasks import Conditioning, prepare_conditioning
from wan.tasks.latents import latent_frame_mask, token_timesteps
from wan.text2video import WanT2V
from wan.video import to_uint8_frames

PROMPT = "a red square moving left"
NEGATIVE = "ugly, static"
SEED = 11
STEPS = 6
SHIFT = 5.0


def transformer(seed: int, in_channels: int, out_channels: int) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=in_channels,
        out_channels=out_channels,
        text_dim=32,
        freq_dim=32,
        ffn_dim=48,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=64,
    )
    with torch.no_grad():
        model.proj_out.weight.normal_(0, 0.2)
    return model.eval()


def wan22_vae(z_dim: int = 8) -> AutoencoderKLWan:
    """A toy Wan2.2 VAE: residual, 2x2 pixel patches, 16x spatial and 4x temporal compression."""
    torch.manual_seed(5)
    gen = torch.Generator().manual_seed(6)
    return AutoencoderKLWan(
        base_dim=16,
        decoder_base_dim=16,
        z_dim=z_dim,
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_spatial=16,
        latents_mean=(torch.randn(z_dim, generator=gen) * 0.3).tolist(),
        latents_std=(torch.rand(z_dim, generator=gen) + 0.5).tolist(),
    ).eval()


@pytest.fixture(scope="module")
def base():
    return tiny_parts(seed=0)


@pytest.fixture(scope="module")
def i2v_pipe(base):
    return WanImageToVideoPipeline(
        tokenizer=base.tokenizer,
        text_encoder=base.text_encoder,
        vae=base.vae,
        scheduler=make_scheduler("unipc", SHIFT),
        transformer=transformer(2, 36, 16),
        transformer_2=transformer(3, 36, 16),
        boundary_ratio=0.9,
    )


@pytest.fixture(scope="module")
def ti2v_parts(base):
    return dict(
        tokenizer=base.tokenizer,
        text_encoder=base.text_encoder,
        vae=wan22_vae(),
        scheduler=make_scheduler("unipc", SHIFT),
        transformer=transformer(4, 8, 8),
    )


def sample_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth random RGB picture (not at the video's size, so the resize runs)."""
    gen = torch.Generator().manual_seed(seed)
    small = (torch.rand(3, 4, 5, generator=gen) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(small).resize((width, height), Image.BILINEAR)


def record_calls(*models):
    """Pre-hooks recording (hidden_states, timestep) of every forward of ``models``."""
    calls = []
    handles = [
        m.register_forward_pre_hook(
            lambda _m, _a, kw: calls.append((kw["hidden_states"].clone(), kw["timestep"].clone())), with_kwargs=True
        )
        for m in models
    ]
    return calls, handles


def reference_loop(
    pipe, conditioning: Conditioning, *, frames: int, height: int, width: int, guidance: tuple[float, float], boundary
):
    """The project's loop in miniature: seed noise, step plan, guidance, solver, and the conditioning hooks."""
    vae = pipe.vae
    cond_ctx, uncond_ctx = pipe.encode_prompt(PROMPT, NEGATIVE, max_sequence_length=32, device="cpu")
    channels = vae.config.z_dim
    shape = (
        1,
        channels,
        (frames - 1) // vae.config.scale_factor_temporal + 1,
        height // vae.config.scale_factor_spatial,
        width // vae.config.scale_factor_spatial,
    )
    latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(SEED), dtype=torch.float32)
    scheduler = make_scheduler("unipc", SHIFT)
    scheduler.set_timesteps(STEPS)
    scheduler.set_begin_index(0)
    plans = plan_steps(
        scheduler.timesteps.tolist(),
        boundary=boundary or 0.0,
        guide_scale_high=guidance[0],
        guide_scale_low=guidance[1],
    )
    experts = {HIGH: pipe.transformer, LOW: pipe.transformer_2}
    for plan in plans:
        expert = experts[plan.expert]
        model_input = conditioning.model_input(latents).to(expert.dtype)
        timestep = conditioning.timestep(plan.timestep, latents)
        velocity = guided_velocity(expert, model_input, timestep, plan, cond_ctx, uncond_ctx)
        latents = scheduler.step(velocity, scheduler.timesteps[plan.index], latents, return_dict=False)[0]
        latents = conditioning.after_step(latents)
    return latents, decode(vae, latents)


def decode(vae, latents: torch.Tensor) -> np.ndarray:
    """8-bit frames [F, H, W, 3] of normalised ``latents``, denormalised as the pipelines do."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    return to_uint8_frames(vae.decode(latents / inv_std + mean, return_dict=False)[0][0])


def peer_run(pipe, **kw):
    """The peer's 8-bit video and its latent after the last step (from the step callback), one call."""
    seen = {}

    def keep_latents(_pipe, _i, _t, tensors):
        seen["latents"] = tensors["latents"]
        return {}

    video = pipe(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=STEPS,
        max_sequence_length=32,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="pt",
        callback_on_step_end=keep_latents,
        **kw,
    ).frames[0]
    return seen["latents"], to_uint8_frames(video.permute(1, 0, 2, 3) * 2 - 1)


def assert_same_calls(ours, theirs):
    assert len(ours) == len(theirs) > 0
    for (x, t), (x_ref, t_ref) in zip(ours, theirs, strict=True):
        assert x.dtype == x_ref.dtype and torch.equal(x, x_ref)
        assert t.shape == t_ref.shape and torch.equal(t.float(), t_ref.float())


def engine_loop(pipe, frames: int, height: int, width: int) -> WanT2V:
    """The project's own denoising loop (``WanT2V.sample``) on the pipe's two experts."""
    config = dataclasses.replace(
        load_task_config("i2v-A14B"),
        sizes=(f"{width}*{height}",),
        default_size=f"{width}*{height}",
        frame_num=frames,
        sample_steps=STEPS,
        text_len=32,
    )
    components = WanComponents(None, None, None, pipe.transformer, pipe.transformer_2, "diffusers")
    return WanT2V(config, components)


@torch.no_grad()
def test_i2v_in_the_engine_loop_matches_wan_image_to_video_pipeline(i2v_pipe):
    frames, height, width = 9, 32, 48
    image = sample_image(53, 37)
    peer_calls, handles = record_calls(i2v_pipe.transformer, i2v_pipe.transformer_2)
    peer_latents, peer_video = peer_run(
        i2v_pipe, image=image, height=height, width=width, num_frames=frames, guidance_scale=3.5, guidance_scale_2=3.0
    )
    for h in handles:
        h.remove()
    conditioning = prepare_conditioning(
        "i2v", i2v_pipe.vae, image_tensor(image, width, height), frames=frames, height=height, width=width, device="cpu"
    )
    cond_ctx, uncond_ctx = i2v_pipe.encode_prompt(PROMPT, NEGATIVE, max_sequence_length=32, device="cpu")
    our_calls, handles = record_calls(i2v_pipe.transformer, i2v_pipe.transformer_2)
    settings = GenerationSettings(prompt=PROMPT, seed=SEED, guide_scale_high=3.5, guide_scale_low=3.0)
    result = engine_loop(i2v_pipe, frames, height, width).sample(
        settings, cond_ctx, uncond_ctx, conditioning=conditioning, progress=False
    )
    for h in handles:
        h.remove()
    assert_same_calls(our_calls, peer_calls)
    assert our_calls[0][0].shape[1] == 36 and our_calls[0][1].shape == (1,)
    assert result.high_noise_steps > 0 and result.low_noise_steps > 0
    assert torch.equal(result.latents, peer_latents)
    video = decode(i2v_pipe.vae, result.latents)
    assert video.shape == peer_video.shape == (frames, height, width, 3)
    assert np.array_equal(video, peer_video)


@torch.no_grad()
@pytest.mark.parametrize("with_image", [True, False], ids=["image", "text"])
def test_ti2v_matches_expand_timesteps_pipelines(ti2v_parts, with_image):
    frames, height, width = 9, 64, 96
    if with_image:
        pipe = WanImageToVideoPipeline(**ti2v_parts, expand_timesteps=True)
        image = sample_image(width, height, seed=1)
        extra = {"image": image}
        pixels = image_tensor(image, width, height)
    else:
        pipe = WanPipeline(**ti2v_parts, expand_timesteps=True)
        extra, pixels = {}, None
    peer_calls, handles = record_calls(pipe.transformer)
    peer_latents, peer_video = peer_run(
        pipe, height=height, width=width, num_frames=frames, guidance_scale=5.0, **extra
    )
    for h in handles:
        h.remove()
    conditioning = prepare_conditioning(
        "ti2v", pipe.vae, pixels, frames=frames, height=height, width=width, device="cpu"
    )
    our_calls, handles = record_calls(pipe.transformer)
    latents, video = reference_loop(
        pipe, conditioning, frames=frames, height=height, width=width, guidance=(5.0, 5.0), boundary=None
    )
    for h in handles:
        h.remove()
    assert_same_calls(our_calls, peer_calls)
    tokens = 3 * (height // 32) * (width // 32)
    assert our_calls[0][1].shape == (1, tokens)
    assert bool((our_calls[0][1][0, : tokens // 3] == 0).all()) is with_image
    if with_image:  # the peer puts the image frame back after the last step; its other frames agree already
        peer_latents = conditioning.after_step(peer_latents)
    assert torch.equal(latents, peer_latents)
    assert np.array_equal(video, peer_video)


def test_i2v_mask_marks_the_first_pixel_frame_in_every_channel_of_latent_frame_zero():
    known = torch.zeros(17)
    known[0] = 1
    mask = latent_frame_mask(known, 4)
    assert mask.shape == (4, 5)
    assert mask[:, 0].eq(1).all() and mask[:, 1:].eq(0).all()
    known[-1] = 1  # a last frame too: only the last latent frame's last channel
    assert latent_frame_mask(known, 4)[:, -1].tolist() == [0, 0, 0, 1]


def test_token_timesteps_zero_only_on_the_given_frame():
    mask = torch.ones(1, 1, 3, 4, 6)
    mask[:, :, 0] = 0
    ts = token_timesteps(mask, 937.0, (2, 2), batch=2)
    assert ts.shape == (2, 3 * 2 * 3)
    assert ts[:, :6].eq(0).all() and ts[:, 6:].eq(937.0).all()


@torch.no_grad()
def test_half_frame_conditioning_keeps_the_image_on_frame_zero(i2v_pipe):
    frames, height, width = 33, 32, 48  # 9 latent frames, half: 5 (frames 0, 2, 4, 6, 8)
    image = image_tensor(sample_image(48, 32, seed=3), width, height)
    full = prepare_conditioning("i2v", i2v_pipe.vae, image, frames=frames, height=height, width=width, device="cpu")
    half = full.at_frames(5)
    latents = torch.randn(1, 16, 5, 4, 6)
    x = half.model_input(latents)
    assert x.shape == (1, 36, 5, 4, 6)
    reference = full.model_input(torch.randn(1, 16, 9, 4, 6))
    assert torch.equal(x[:, 16:], reference[:, 16:, ::2])
    assert x[:, 16:20, 0].eq(1).all() and x[:, 16:20, 1:].eq(0).all()
    image_latent = prepare_conditioning(
        "i2v", i2v_pipe.vae, image, frames=1, height=height, width=width, device="cpu"
    ).model_input(torch.zeros(1, 16, 1, 4, 6))[:, 20:]
    torch.testing.assert_close(x[:, 20:, :1], image_latent, rtol=1e-5, atol=1e-5)
    assert torch.equal(half.at_frames(9).model_input(torch.zeros(1, 16, 9, 4, 6))[:, 16:], reference[:, 16:])
    with pytest.raises(ValueError, match="full or half"):
        full.at_frames(4)


@torch.no_grad()
def test_ti2v_half_frame_timesteps_follow_the_frame_count(ti2v_parts):
    image = image_tensor(sample_image(96, 64), 96, 64)
    cond = prepare_conditioning("ti2v", ti2v_parts["vae"], image, frames=17, height=64, width=96, device="cpu")
    half = cond.at_frames(3)
    ts = half.timestep(500.0, torch.zeros(1, 8, 3, 4, 6))
    assert ts.shape == (1, 3 * 6) and ts[0, :6].eq(0).all() and ts[0, 6:].eq(500).all()
    out = half.after_step(torch.randn(1, 8, 3, 4, 6))
    assert torch.equal(out[:, :, :1], cond.image_latent)


def test_image_tasks_refuse_a_missing_or_extra_image():
    with pytest.raises(ConfigError, match="needs an image"):
        prepare_conditioning("i2v", None, None, frames=5, height=32, width=32, device="cpu")
    with pytest.raises(ConfigError, match="takes no image"):
        prepare_conditioning("t2v", None, torch.zeros(1, 3, 32, 32), frames=5, height=32, width=32, device="cpu")


@torch.no_grad()
def test_i2v_half_frame_in_the_engine_loop_keeps_the_image_on_frame_zero(i2v_pipe):
    frames, height, width = 17, 32, 48  # 5 latent frames, 3 at half
    image = image_tensor(sample_image(48, 32, seed=4), width, height)
    conditioning = prepare_conditioning(
        "i2v", i2v_pipe.vae, image, frames=frames, height=height, width=width, device="cpu"
    )
    full = conditioning.model_input(torch.zeros(1, 16, 5, 4, 6))[:, 16:]
    cond_ctx, uncond_ctx = i2v_pipe.encode_prompt(PROMPT, NEGATIVE, max_sequence_length=32, device="cpu")
    calls, handles = record_calls(i2v_pipe.transformer, i2v_pipe.transformer_2)
    engine_loop(i2v_pipe, frames, height, width).sample(
        GenerationSettings(prompt=PROMPT, seed=SEED, half_frame=True),
        cond_ctx,
        uncond_ctx,
        conditioning=conditioning,
        progress=False,
    )
    for h in handles:
        h.remove()
    counts = [x.shape[2] for x, _ in calls]
    assert 3 in counts and counts[-1] == 5
    for x, _ in calls:
        assert x.shape[1] == 36
        expected = full if x.shape[2] == 5 else full[:, :, ::2]
        assert torch.equal(x[:, 16:], expected)
