"""scripts/train_tiny.py: the two-stage run (VAE, then experts on that VAE) makes a loadable model."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from wan.config import load_task_config
from wan.settings import GenerationSettings
from wan.text2video import WanT2V

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "train_tiny.py"


def _train(*args: str) -> subprocess.CompletedProcess:
    """A quick run whose budget is far past its step caps: the caps decide the steps, not a busy CPU's clock."""
    command = [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--time_budget_min", "8", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train_tiny")
    vae_dir, model_dir = root / "vae_stage", root / "model"
    first = _train("--stage", "vae", "--out_dir", str(vae_dir), "--set", "vae_batch=2")
    assert first.returncode == 0, first.stderr[-2000:]
    second = _train("--stage", "experts", "--vae_from", str(vae_dir), "--out_dir", str(model_dir))
    assert second.returncode == 0, second.stderr[-2000:]
    return vae_dir, model_dir


def test_vae_stage_writes_only_the_vae(trained):
    vae_dir, _ = trained
    assert sorted(p.name for p in vae_dir.iterdir()) == ["train_log.json", "vae"]
    log = json.loads((vae_dir / "train_log.json").read_text())
    assert log["recipe"]["vae_batch"] == 2  # the --set override reached the recipe
    assert log["stages"]["vae"]["steps"] == 2 and "heldout" in log["stages"]["vae"]


def test_experts_stage_builds_on_that_vae(trained):
    vae_dir, model_dir = trained
    log = json.loads((model_dir / "train_log.json").read_text())
    assert log["stages"]["vae"]["from"] == str(vae_dir)
    assert log["stages"]["experts"]["steps"] == 3
    assert [p["step"] for p in log["stages"]["experts"]["probes"]] == [2]
    assert set(log["stages"]["eval"]) >= {"heldout", "train"}
    trained_vae = (vae_dir / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert (model_dir / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == trained_vae


def test_experts_can_continue_from_a_saved_model(trained, tmp_path):
    vae_dir, model_dir = trained
    out = tmp_path / "continued"
    run = _train(
        "--stage", "experts", "--vae_from", str(model_dir), "--experts_from", str(model_dir), "--out_dir", str(out)
    )
    assert run.returncode == 0, run.stderr[-2000:]
    log = json.loads((out / "train_log.json").read_text())
    assert log["stages"]["experts"]["continued_from"] == str(model_dir)
    # The first logged loss starts where the saved experts left off, not at a fresh model's.
    fresh = json.loads((model_dir / "train_log.json").read_text())["stages"]["experts"]
    assert log["stages"]["experts"]["high"][0]["loss"] < fresh["high"][0]["loss"]


def test_the_result_loads_and_generates(trained):
    _, model_dir = trained
    config = replace(load_task_config("t2v-tiny"), sizes=("64*64",), default_size="64*64")
    pipe = WanT2V.from_pretrained(config, model_dir, device="cpu")
    result = pipe.generate(GenerationSettings(prompt="a red square moving left", sample_steps=2, frame_num=9))
    assert result.video.shape == (3, 9, 64, 64) and torch.isfinite(result.video).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--stage", "experts"], "--vae_from goes with --stage experts"),
        (["--set", "no_such_field=1"], "expected FIELD=VALUE"),
        (["--experts_from", "somewhere"], "--experts_from goes with --stage experts"),
        (["--stage", "experts", "--vae_from", "/nonexistent"], "is not a folder written by --stage vae"),
    ],
)
def test_bad_arguments_are_refused(args, message, tmp_path):
    run = _train("--out_dir", str(tmp_path / "x"), *args)
    assert run.returncode == 2 and message in run.stderr
    assert not (tmp_path / "x").exists()
