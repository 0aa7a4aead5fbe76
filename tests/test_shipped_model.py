"""The shipped t2v-tiny checkpoint loads through the A14B code path and generates on the CPU."""

import pytest
import torch

from wan.config import HIGH, LOW, load_task_config
from wan.frames import latent_frame_count
from wan.settings import GenerationSettings
from wan.text2video import WanT2V

CONFIG = load_task_config("t2v-tiny")


@pytest.fixture(scope="module")
def pipe():
    return WanT2V.from_pretrained(CONFIG, CONFIG.ckpt_dir(), device="cpu")


def test_shipped_checkpoint_is_the_default_and_loads(pipe):
    assert CONFIG.task == load_task_config().task
    assert pipe.components.layout == "diffusers"
    assert all(e.dtype == torch.float32 for e in pipe.experts.values())  # fp16 on disk, fp32 on the CPU


def test_short_generation_runs(pipe):
    result = pipe.generate(
        GenerationSettings(prompt="a red square moving left", seed=0, sample_steps=4), progress=False
    )
    assert result.video.shape == (3, CONFIG.frame_num, 128, 128)
    assert torch.isfinite(result.video).all() and result.video.std() > 0.05
    assert result.latents.shape[2] == latent_frame_count(CONFIG.frame_num)
    assert result.forwards[HIGH] + result.forwards[LOW] == 8


def test_half_frame_on_the_shipped_model(pipe):
    result = pipe.generate(
        GenerationSettings(prompt="a blue circle moving up", seed=0, sample_steps=4, half_frame=True), progress=False
    )
    assert result.video.shape == (3, CONFIG.frame_num, 128, 128)
