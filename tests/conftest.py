"""Shared fixtures: tiny random Wan2.2 parts and a task config sized for them."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import save_diffusers_layout, tiny_parts  # noqa: E402

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
