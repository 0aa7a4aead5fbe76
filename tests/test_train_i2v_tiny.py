"""scripts/train_i2v_tiny.py and the i2v-tiny it shipped: growing keeps t2v-tiny, and the image conditions the video."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch
from diffusers import WanImageToVideoPipeline, WanTransformer3DModel

from wan.config import load_task_config
from wan.video import to_uint8_frames

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import train_i2v_tiny  # noqa: E402

try:
    from evaluation.metrics import psnr
    from evaluation.tiny_world import render_scenes, sample_scene
except ImportError:
    from wan.eval.metrics import psnr
    from wan.eval.tiny_world import render_scenes, sample_scene

CONFIG = load_task_config("i2v-tiny")


def test_grow_adds_zero_channels_and_keeps_the_outputs():
    torch.manual_seed(0)
    small = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=16,
        out_channels=16,
        text_dim=16,
        freq_dim=16,
        ffn_dim=32,
        num_layers=1,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
    ).eval()
    grown = train_i2v_tiny.grow(small, 20).eval()
    assert grown.config.in_channels == 36 and grown.config.out_channels == 16
    x, extra = torch.randn(1, 16, 2, 4, 4), torch.randn(1, 20, 2, 4, 4)
    kw = dict(timestep=torch.tensor([500.0]), encoder_hidden_states=torch.randn(1, 5, 16), return_dict=False)
    with torch.no_grad():
        assert torch.equal(grown(hidden_states=torch.cat([x, extra], 1), **kw)[0], small(hidden_states=x, **kw)[0])


@pytest.fixture(scope="module")
def pipe():
    return WanImageToVideoPipeline.from_pretrained(CONFIG.ckpt_dir(), torch_dtype=torch.float32)


def test_shipped_model_takes_the_i2v_channels(pipe):
    for expert in (pipe.transformer, pipe.transformer_2):
        assert expert.config.in_channels == 4 + 2 * pipe.vae.config.z_dim
    assert pipe.config.boundary_ratio == CONFIG.boundary


@torch.no_grad()
def test_first_frame_follows_the_image_better_than_without_its_channels(pipe):
    """The fine-tuned model reproduces the image in frame 0; with the new channels zeroed (t2v-tiny) it does not."""
    scene = sample_scene(random.Random(3), "test")
    image = render_scenes([scene], 1, 128, 128)[:, :, 0]
    image_u8 = to_uint8_frames(image[0].unsqueeze(1))

    def first_frame_psnr() -> float:
        video = train_i2v_tiny.sample(pipe, image, scene.text, frames=5, steps=8, seed=0, half_frame=None, device="cpu")
        return psnr(to_uint8_frames(video)[:1], image_u8)

    conditioned = first_frame_psnr()
    saved = [e.patch_embedding.weight.clone() for e in (pipe.transformer, pipe.transformer_2)]
    try:
        for expert in (pipe.transformer, pipe.transformer_2):
            expert.patch_embedding.weight[:, 16:] = 0
        unconditioned = first_frame_psnr()
    finally:
        for expert, weight in zip((pipe.transformer, pipe.transformer_2), saved, strict=True):
            expert.patch_embedding.weight.copy_(weight)
    assert conditioned > unconditioned + 3
