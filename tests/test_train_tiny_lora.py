"""scripts/train_tiny_lora.py and the LoRA it trained (models/loras): it paints t2v-tiny's grey background blue."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch

from wan.config import load_task_config
from wan.lora import BOTH, LoraSpec, apply_loras, check_loras
from wan.settings import GenerationSettings
from wan.text2video import WanT2V

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "train_tiny_lora.py"
SHIPPED = REPO / "models" / "loras" / "tiny_blue_background.safetensors"


def load_script():
    spec = importlib.util.spec_from_file_location("train_tiny_lora", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = load_script()


def test_background_colour_reads_the_median_pixel():
    video = torch.full((3, 2, 8, 8), -1.0)
    video[2] = 0.0  # blue 0.5
    video[:, :, :2, :2] = 1.0  # a white shape in a corner
    assert script.background_colour(video) == [0.0, 0.0, 0.5]


def test_shipped_lora_turns_the_background_blue():
    assert SHIPPED.stat().st_size < 2**20
    (lora,) = check_loras([LoraSpec(SHIPPED, 1.0, BOTH)])
    assert lora.format == "diffusers"
    colours = {}
    for name, loras in (("base", []), ("lora", [lora])):
        pipe = WanT2V.from_pretrained(load_task_config("t2v-tiny"), REPO / "models" / "t2v-tiny")
        apply_loras(pipe, loras)
        settings = GenerationSettings(prompt="a red square moving left", seed=1, frame_num=5, sample_steps=10)
        colours[name] = script.background_colour(pipe.generate(settings, progress=False).video)
    (r0, _, b0), (r1, _, b1) = colours["base"], colours["lora"]
    assert abs(r0 - b0) < 0.05  # grey
    assert b1 - r1 > 0.25 and b1 > b0 + 0.2, colours  # blue


def test_quick_run_writes_a_loadable_lora_and_its_log(tmp_path):
    out = tmp_path / "l.safetensors"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    log = json.loads(out.with_suffix(".json").read_text())
    assert log["train"]["steps"] == 2 and set(log["eval"]) == {"base", "lora"}
    (lora,) = check_loras([LoraSpec(out, 1.0, BOTH)])
    assert lora.pairs == 6 * 8  # 6 blocks x (q, k, v, o) of self- and cross-attention
