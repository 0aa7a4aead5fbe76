"""Shared fixtures: tiny random Wan2.2 parts and a task config sized for them."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import tiny_parts  # noqa: E402

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
