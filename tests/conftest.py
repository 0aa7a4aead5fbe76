"""Shared fixtures: tiny random Wan2.2 parts, task configs sized for them, their checkpoints and test images."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import LAYOUTS, save_diffusers_layout, tiny_i2v_parts, tiny_parts, tiny_ti2v_parts  # noqa: E402

from wan.config import TaskConfig, load_task_config  # noqa: E402


@pytest.fixture(scope="session")
def parts():
    return tiny_parts(seed=0)


@pytest.fixture(scope="session")
def test_config() -> TaskConfig:
    """t2v-tiny's sampling settings at a size the tiny random parts run in milliseconds."""
    return dataclasses.replace(
        load_task_config("t2v-tiny"), sizes=("32*32", "48*32"), default_size="32*32", frame_num=17, sample_steps=12
    )


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """The tiny random parts saved as a diffusers-layout checkpoint (for the CLI and batch tests)."""
    return save_diffusers_layout(tiny_parts(seed=0), tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def task_file(tmp_path_factory, test_config) -> Path:
    """The tests' task config as a --task file: 32*32 or 48*32, 5 frames, 3 steps (2 high-noise, 1 low)."""
    config = dataclasses.replace(test_config, task="t2v-test", frame_num=5, sample_steps=3, default_ckpt_dir=None)
    path = tmp_path_factory.mktemp("task") / "t2v-test.json"
    path.write_text(json.dumps(dataclasses.asdict(config)))
    return path


def write_task(tmp_path_factory, task: str, **changes) -> Path:
    """A --task file: the released task's settings at a size the tiny parts run in a moment."""
    config = dataclasses.replace(load_task_config(task), text_len=32, default_ckpt_dir=None, **changes)
    path = tmp_path_factory.mktemp("task") / f"{task}.json"
    path.write_text(json.dumps(dataclasses.asdict(config)))
    return path


@pytest.fixture(scope="module")
def i2v_task(tmp_path_factory) -> Path:
    """i2v-A14B at 48*32 or 32*48, 5 frames, 4 steps (2 high-noise, 2 low-noise at boundary 0.9, shift 5)."""
    return write_task(
        tmp_path_factory, "i2v-A14B", sizes=("48*32", "32*48"), default_size="48*32", frame_num=5, sample_steps=4
    )


@pytest.fixture(scope="module")
def ti2v_task(tmp_path_factory) -> Path:
    """ti2v-5B at 96*64 or 64*96 (the Wan2.2 VAE's 16x16 times the 2x2 patch), 5 frames, 3 steps."""
    return write_task(
        tmp_path_factory, "ti2v-5B", sizes=("96*64", "64*96"), default_size="96*64", frame_num=5, sample_steps=3
    )


@pytest.fixture(scope="module")
def i2v_parts():
    return tiny_i2v_parts(seed=0)


@pytest.fixture(scope="module")
def ti2v_parts():
    return tiny_ti2v_parts(seed=0)


@pytest.fixture(scope="module")
def i2v_ckpts(tmp_path_factory, i2v_parts) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("i2v-ckpt")
    return {name: save(i2v_parts, root / name) for name, save in LAYOUTS.items()}


@pytest.fixture(scope="module")
def ti2v_ckpts(tmp_path_factory, ti2v_parts) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ti2v-ckpt")
    return {name: save(ti2v_parts, root / name) for name, save in LAYOUTS.items()}


def smooth_picture(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth random RGB picture [H, W, 3] (a few colour blobs, bilinearly enlarged)."""
    small = np.random.default_rng(seed).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """Conditioning images; none at the video's size, so every resize runs."""
    root = tmp_path_factory.mktemp("images")
    rgba = Image.fromarray(smooth_picture(40, 60, 3)).convert("RGBA")
    rgba.putpixel((5, 5), (0, 0, 0, 0))
    pictures = {
        "portrait": Image.fromarray(smooth_picture(40, 60, 1)),  # 2:3 -> a 32*48 i2v video within 48*32's area
        "grey": Image.fromarray(smooth_picture(40, 60, 2)).convert("L"),  # converted to RGB, as diffusers does
        "landscape": Image.fromarray(smooth_picture(144, 96, 4)),  # 3:2 -> a 96*64 ti2v video
        "transparent": rgba,
        "16-bit": Image.fromarray(np.full((60, 40), 40000, np.uint16)),
    }
    paths = {}
    for name, image in pictures.items():
        paths[name] = root / f"{name}.png"
        image.save(paths[name])
    return paths
