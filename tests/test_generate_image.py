"""generate.py with an image: i2v and ti2v end to end on tiny checkpoints of both layouts, frame for frame
equal to diffusers' pipelines, and every bad image-task input is exit 2, one line, no file, no model loaded.

The video is written as a PNG frame grid (lossless), so the 8-bit frames can be compared exactly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from diffusers import WanImageToVideoPipeline
from diffusers.utils import load_image as diffusers_load_image
from tiny_models import LAYOUTS, i2v_pipeline, ti2v_pipeline

import generate
from wan import engine
from wan.video import frame_grid, read_video, to_uint8_frames

PROMPT = "a red square moving left"
NEGATIVE = "ugly, static"
SEED = 7


def cli(task: Path, ckpt: Path, out: Path, *flags: str) -> list[str]:
    return [
        "--task", str(task), "--ckpt_dir", str(ckpt), "--device", "cpu", "--quiet", "--prompt", PROMPT,
        "--negative_prompt", NEGATIVE, "--base_seed", str(SEED), "--save_file", str(out), *flags,
    ]  # fmt: skip


@torch.no_grad()
def peer_grid(pipe, **kw) -> np.ndarray:
    """The peer's video as the CLI's PNG grid holds it (8-bit, as tests/test_tasks.py converts it)."""
    video = pipe(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        max_sequence_length=32,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="pt",
        **kw,
    ).frames[0]
    return frame_grid(to_uint8_frames(video.permute(1, 0, 2, 3) * 2 - 1))


def assert_same_video(grid_path: Path, expected: np.ndarray) -> None:
    ours = iio.imread(grid_path)
    assert ours.shape == expected.shape
    assert np.array_equal(ours, expected)
    assert len(np.unique(ours.reshape(-1, 3), axis=0)) > 16  # a real picture, not a constant one


@pytest.fixture(scope="module")
def i2v_peer(i2v_parts, images):
    """diffusers' WanImageToVideoPipeline on the same parts, per image; the image as diffusers' load_image reads it."""
    pipe = i2v_pipeline(i2v_parts)

    def run(image: str) -> np.ndarray:
        # The 2:3 image decides the shape: 32 wide, 48 high (the area of --size 48*32).
        return peer_grid(
            pipe,
            image=diffusers_load_image(str(images[image])),
            height=48,
            width=32,
            num_frames=5,
            num_inference_steps=4,
            guidance_scale=3.5,
            guidance_scale_2=3.5,
        )

    return run


@pytest.mark.parametrize(
    ("layout", "image"), [("official", "portrait"), ("diffusers", "portrait"), ("diffusers", "grey")]
)
def test_i2v_equals_wan_image_to_video_pipeline(i2v_task, i2v_ckpts, i2v_peer, images, tmp_path, capsys, layout, image):
    grid = tmp_path / "v.png"
    assert generate.main(cli(i2v_task, i2v_ckpts[layout], grid, "--image", str(images[image]))) == 0
    assert capsys.readouterr().out == f"{grid}\n"
    assert_same_video(grid, i2v_peer(image))
    meta = json.loads((tmp_path / "v.png.json").read_text())
    assert meta["settings"]["image"] == str(images[image]) and meta["steps"] == {"high_noise": 2, "low_noise": 2}


def test_default_name_says_the_videos_shape_which_the_image_sets(i2v_task, i2v_ckpts, images, tmp_path):
    """A 2:3 image within --size 48*32's area makes a 32*48 video; its default name says so."""
    flags = cli(i2v_task, i2v_ckpts["diffusers"], tmp_path / "unused.png", "--image", str(images["portrait"]))
    at = flags.index("--save_file")
    flags[at : at + 2] = ["--save_dir", str(tmp_path / "out")]
    assert generate.main(flags) == 0
    (video,) = (tmp_path / "out").glob("*.mp4")
    assert video.name.startswith("i2v-A14B_32x48_a_red_square_moving_left_")
    assert read_video(video).shape == (5, 48, 32, 3)


@pytest.fixture(scope="module")
def ti2v_peer(ti2v_parts, images):
    """diffusers' WanPipeline(expand_timesteps=True) without an image, WanImageToVideoPipeline(expand_timesteps=True)
    with one; cached per case."""
    cache: dict[bool, np.ndarray] = {}

    def run(with_image: bool) -> np.ndarray:
        if with_image not in cache:
            settings = dict(height=64, width=96, num_frames=5, num_inference_steps=3, guidance_scale=5.0)
            if with_image:
                text_pipe = ti2v_pipeline(ti2v_parts)
                pipe = WanImageToVideoPipeline(**text_pipe.components, expand_timesteps=True)
                settings["image"] = diffusers_load_image(str(images["landscape"]))
            else:
                pipe = ti2v_pipeline(ti2v_parts)
            cache[with_image] = peer_grid(pipe, **settings)
        return cache[with_image]

    return run


@pytest.mark.parametrize("with_image", [True, False], ids=["image", "text"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_ti2v_equals_expand_timesteps_pipelines(ti2v_task, ti2v_ckpts, ti2v_peer, images, tmp_path, layout, with_image):
    grid = tmp_path / "v.png"
    flags = ["--image", str(images["landscape"])] if with_image else []
    assert generate.main(cli(ti2v_task, ti2v_ckpts[layout], grid, *flags)) == 0
    assert_same_video(grid, ti2v_peer(with_image))


BAD_INPUT = [
    # (task, checkpoint, image, extra flags, what the one line says)
    ("i2v", "t2v", "portrait", [], r"takes 16 input channels .* needs 36 .*Wan-AI/Wan2.2-I2V-A14B"),
    ("ti2v", "i2v", None, [], r"task ti2v-5B runs .*Wan-AI/Wan2.2-TI2V-5B"),
    ("i2v", "i2v", None, [], r"task i2v-A14B makes a video from an image; pass --image PATH"),
    ("t2v", "t2v", "portrait", [], r"task t2v-test takes no image; drop --image"),
    ("i2v", "i2v", "missing", [], r"--image '.*missing.png': does not exist"),
    ("i2v", "i2v", "transparent", [], r"transparent.png has transparent pixels; flatten it"),
    ("ti2v", "ti2v", "16-bit", [], r"16-bit.png has I;16 samples \(more than 8 bits\); convert it to 8-bit RGB"),
    ("ti2v", "ti2v", None, ["--enable_half_frame_generation"], r"needs an expert switch; task ti2v-5B has one dense"),
]


@pytest.mark.parametrize(
    ("task", "ckpt_kind", "image", "flags", "message"),
    BAD_INPUT,
    ids=[
        "t2v-ckpt-for-i2v",
        "two-experts-for-ti2v",
        "i2v-without-image",
        "t2v-with-image",
        "missing-image",
        "transparent-image",
        "16-bit-image",
        "half-frame-ti2v",
    ],
)
def test_bad_image_task_input_is_exit_2_one_line_no_output(
    request, images, tmp_path, monkeypatch, capsys, task, ckpt_kind, image, flags, message
):
    monkeypatch.setattr(engine, "build_engine", lambda *a, **k: pytest.fail("the model must not load"))
    tasks = {"i2v": request.getfixturevalue("i2v_task"), "ti2v": request.getfixturevalue("ti2v_task")}
    tasks["t2v"] = request.getfixturevalue("task_file")
    ckpts = {"t2v": request.getfixturevalue("ckpt")}
    ckpts[ckpt_kind] = ckpts.get(ckpt_kind) or request.getfixturevalue(f"{ckpt_kind}_ckpts")["diffusers"]
    out = tmp_path / "out"
    out.mkdir()
    image_flags = [] if image is None else ["--image", str(images.get(image, tmp_path / f"{image}.png"))]
    capsys.readouterr()  # what building the checkpoints printed
    assert generate.main(cli(tasks[task], ckpts[ckpt_kind], out / "v.png", *image_flags, *flags)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert re.search(message, err), err
    assert not list(out.iterdir())
