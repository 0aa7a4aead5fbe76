"""Placement: each placement gives the same video; the auto choice follows the memory estimate."""

import copy
import dataclasses

import pytest
import torch
from tiny_models import as_components

from wan import placement
from wan.config import load_task_config
from wan.errors import ConfigError
from wan.placement import BlockStream, ModelOffload, Placement, Resident, apply_placement, choose_placement
from wan.settings import GenerationSettings
from wan.text2video import WanT2V

SETTINGS = GenerationSettings(prompt="a red square moving left", seed=3, size="32*32", frame_num=9, sample_steps=4)


def make_pipe(test_config, parts, placement_: Placement | None = None) -> WanT2V:
    return WanT2V(test_config, as_components(copy.deepcopy(parts)), placement=placement_)


def test_every_placement_gives_the_same_video(test_config, parts):
    videos = [
        make_pipe(test_config, parts, p).generate(SETTINGS, progress=False).video
        for p in (None, Resident(), ModelOffload())
    ]
    assert all(torch.equal(videos[0], v) for v in videos[1:])


def test_resident_keeps_the_text_encoder_off_the_device_unless_asked(test_config, parts):
    pipe = make_pipe(test_config, parts, Resident())
    assert pipe.placement.name == "resident" and not pipe.placement.keep_text_encoder
    assert make_pipe(test_config, parts).placement.keep_text_encoder  # the default: official --offload_model False


def test_choices_and_their_errors(test_config, parts):
    pipe = make_pipe(test_config, parts, Placement())
    shape = {"tokens": 64, "frames": 9, "height": 32, "width": 32}
    assert isinstance(choose_placement(pipe, "offload", **shape), ModelOffload)
    assert isinstance(choose_placement(pipe, "auto", **shape), Resident)  # on the CPU
    assert isinstance(choose_placement(pipe, "stream", **shape), BlockStream)
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        apply_placement(pipe, BlockStream())
    with pytest.raises(ConfigError, match="unknown --placement 'gpu'"):
        choose_placement(pipe, "gpu", **shape)


@pytest.mark.parametrize(
    ("free_gib", "expected", "keeps_text_encoder", "need_gib"),
    [
        (80, Resident, True, 30),
        (25, Resident, False, 20),
        (18, Resident, False, 15),
        (12, ModelOffload, None, 10),
        (1, BlockStream, None, 10),
    ],
)
def test_auto_on_a_gpu_follows_the_estimate(
    test_config, parts, monkeypatch, free_gib, expected, keeps_text_encoder, need_gib
):
    """Everything resident if it fits, else the text encoder visits, then a tiled decode, then whole parts
    visiting in turn, else streaming."""
    pipe = make_pipe(test_config, parts, Placement())
    pipe.device = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda _device: (free_gib * placement.GIB, 80 * placement.GIB))
    monkeypatch.setattr(
        placement,
        "resident_peak_bytes",
        lambda *_a, with_text_encoder, tiled: (30 if with_text_encoder else 20 if not tiled else 15) * placement.GIB,
    )
    monkeypatch.setattr(placement, "offload_peak_bytes", lambda *_a: 10 * placement.GIB)
    chosen = choose_placement(pipe, "auto", tokens=75600, frames=81, height=720, width=1280)
    assert type(chosen) is expected
    assert getattr(chosen, "keep_text_encoder", None) == keeps_text_encoder
    assert getattr(chosen, "vae_tiling", None) == (need_gib == 15 if expected is Resident else None)
    assert f"{need_gib:.1f} GiB" in chosen.reason and f"{free_gib:.1f} GiB" in chosen.reason


def test_offload_sends_the_expert_away_before_the_decode(test_config, parts):
    pipe = make_pipe(test_config, parts, ModelOffload())
    seen = []
    pipe.generate(SETTINGS, progress=False, on_step=lambda plan, _latents: seen.append(set(pipe.placement._visiting)))
    assert seen[0] == {"high_noise"} and seen[-1] == {"low_noise"}  # one expert at a time while sampling
    assert pipe.placement._visiting == {}  # gone before the VAE decoded


def test_offload_estimate_is_the_largest_part_with_its_working_set(test_config, parts):
    pipe = make_pipe(test_config, parts, Placement())
    config = pipe.experts["high_noise"].config
    dim = config.num_attention_heads * config.attention_head_dim
    working = placement.dit_activation_bytes(64, dim, config.ffn_dim)
    expert = placement.module_bytes(pipe.experts["high_noise"]) + working
    decode = placement.module_bytes(pipe.components.vae) + placement.vae_decode_bytes(9, 32, 32, tiled=False)
    text = placement.module_bytes(pipe.components.text_encoder) * 1.1
    assert placement.offload_peak_bytes(pipe, 64, 9, 32, 32) == int(max(expert, decode, text))
    assert placement.offload_peak_bytes(pipe, 64, 9, 32, 32) < placement.resident_peak_bytes(
        pipe, 64, 9, 32, 32, with_text_encoder=False
    )


def test_estimates_scale_as_expected():
    # A14B at 720p: 75,600 tokens, dim 5120, ffn 13824 -> about 9.8 GB of working memory per forward.
    assert placement.dit_activation_bytes(75600, 5120, 13824) == 75600 * (2 * 13824 + 10 * 5120) * 2
    assert placement.vae_decode_bytes(81, 720, 1280, tiled=True) < placement.vae_decode_bytes(
        81, 720, 1280, tiled=False
    )
    assert placement.module_bytes(torch.nn.Linear(4, 2)) == (8 + 2) * 4
    assert placement.module_bytes(None) == 0


@pytest.mark.parametrize(
    ("task", "size", "image"),
    [("i2v-A14B", "48*32", "portrait"), ("ti2v-5B", "96*64", "landscape"), ("ti2v-5B", "96*64", None)],
)
def test_every_placement_gives_the_same_video_for_the_image_tasks(request, images, task, size, image):
    """Whole-model offload moves the conditioning's VAE and the one or two experts; the video stays the same."""
    parts = request.getfixturevalue("i2v_parts" if task == "i2v-A14B" else "ti2v_parts")
    config = dataclasses.replace(load_task_config(task), sizes=(size,), default_size=size, frame_num=5, text_len=32)
    settings = GenerationSettings(
        prompt="a red square moving left", seed=3, sample_steps=3, image=image and str(images[image])
    )
    videos = [
        WanT2V(config, as_components(copy.deepcopy(parts)), placement=p).generate(settings, progress=False).video
        for p in (Resident(), ModelOffload())
    ]
    assert torch.equal(videos[0], videos[1])
