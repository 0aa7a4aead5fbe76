"""wan.engine: the one way from options to a ready pipeline; its videos are the loop's, its sidecar the options'."""

from __future__ import annotations

import torch

import generate
from wan.engine import build_engine, placement_shape
from wan.options import resolve_options
from wan.settings import GenerationSettings
from wan.text2video import WanT2V


def options_for(task_file, ckpt, *argv: str):
    argv = ["--task", str(task_file), "--ckpt_dir", str(ckpt), "--device", "cpu", *argv]
    return resolve_options(vars(generate.build_parser().parse_args(argv)))


def test_the_engine_makes_the_loops_video_and_records_its_options(task_file, ckpt):
    options = options_for(task_file, ckpt)
    settings = GenerationSettings(prompt="a red square moving left", seed=3)
    engine = build_engine(options)
    result = engine.generate(settings, progress=False)
    direct = WanT2V.from_pretrained(options.config, ckpt).generate(settings, progress=False)
    assert torch.equal(result.video, direct.video)
    assert set(engine.load_timings) == {"load"}
    context = engine.sidecar_context()
    assert context["task"] == "t2v-test" and context["options"]["device"] == "cpu"
    assert context["options"]["levers"] == options.levers.as_dict()


def test_placement_is_sized_for_the_largest_run(task_file, ckpt):
    options = options_for(task_file, ckpt)
    engine = build_engine(options)
    small, large = (engine.plan(GenerationSettings(prompt="x", size=s)) for s in ("32*32", "48*32"))
    assert placement_shape(options.config, [small, large]) == {"tokens": 12, "frames": 5, "height": 32, "width": 48}
    assert placement_shape(options.config, [])["tokens"] == 0
