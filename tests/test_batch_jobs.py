"""Jobs (wan.batch.jobs): items resolved against the command line, with fixed seeds and checked outputs."""

from __future__ import annotations

import dataclasses
import json

from safetensors.torch import save_file
from tiny_models import lora_tensors, random_lora

import generate
from wan.batch.jobs import item_seed, plan_jobs
from wan.batch.prompt_file import ITEM_FLAGS, parse_item
from wan.config import HIGH, LOW


def test_huge_base_seed_gives_valid_item_seeds():
    assert item_seed(3, "a", 2**32 - 2) == 1


def test_items_without_seed_get_a_fixed_one():
    assert item_seed(4, "a", 100) == 104
    assert item_seed(4, "a", -1) == item_seed(4, "a", -1) != item_seed(5, "a", -1)
    assert 0 <= item_seed(0, "b", -1) < 2**31


def test_items_take_every_generation_flag(tmp_path, test_config, parts):
    lora = tmp_path / "l.safetensors"
    save_file(lora_tensors(random_lora(parts.high_noise_model, 2, seed=0), "wan", 1.0), lora)
    item = {
        "prompt": "a cat",
        "negative_prompt": "dull",
        "seed": 11,
        "size": "48*32",
        "frame_num": 9,
        "sample_steps": 4,
        "sample_shift": 5,
        "sample_solver": "euler",
        "sample_guide_scale": 2.5,
        "enable_half_frame_generation": True,
        "half_frame_steps": "0:",
        "half_frame_positions": "stride2",
        "frame_completion": "repeat",
        "enable_improved_frame_completion": False,
        "cfg_truncate_steps": 1,
        "cfg_truncate_high_noise_steps": 2,
        "lora": f"{lora}:0.5",
        "lora_high": [str(lora), str(lora)],
        "lora_low": [],
        "save_file": "sub/a.png",
    }
    # the task is text-to-video (no image), and --lora_dir's folders are wan.lora's (test_lora)
    assert set(item) - {"seed"} == set(ITEM_FLAGS) - {"base_seed", "image", "lora_dir"}
    defaults = generate.generation_flags(vars(generate.build_parser().parse_args([])))
    (job,) = plan_jobs([parse_item(0, 1, json.dumps(item))], defaults, test_config, tmp_path)
    assert job.error is None and job.output == tmp_path / "sub" / "a.png"
    assert [(f.spec.scale, f.spec.experts) for f in job.loras] == [(0.5, (HIGH, LOW)), (1.0, (HIGH,)), (1.0, (HIGH,))]
    assert dataclasses.asdict(job.settings) == {
        "prompt": "a cat",
        "negative_prompt": "dull",
        "size": "48*32",
        "frame_num": 9,
        "seed": 11,
        "sample_solver": "euler",
        "sample_steps": 4,
        "sample_shift": 5,
        "guide_scale_high": 2.5,
        "guide_scale_low": 2.5,
        "half_frame": True,
        "half_frame_steps": "0:",
        "half_frame_positions": "stride2",
        "frame_completion": "repeat",
        "cfg_truncate_steps": 1,
        "cfg_truncate_high_noise_steps": 2,
        "image": None,
    }


def test_two_items_cannot_share_an_output(tmp_path, test_config):
    defaults = generate.generation_flags(vars(generate.build_parser().parse_args([])))
    items = [parse_item(i, i + 1, '{"prompt": "x", "save_file": "a.mp4"}') for i in range(2)]
    first, second = plan_jobs(items, defaults, test_config, tmp_path)
    assert first.error is None and "is already item 0's output" in second.error
