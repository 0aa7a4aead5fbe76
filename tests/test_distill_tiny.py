"""scripts/distill_tiny.py: its teacher states are the product's teacher run, its student loop is the product's
``euler_distill`` sampling, and the shipped pair loads through ``--lora_dir`` and makes the 4-step video."""

from __future__ import annotations

import importlib.util
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from tiny_models import as_components, tiny_parts

from evaluation.metrics import psnr
from wan.config import HIGH, LOW, load_task_config
from wan.lora import apply_loras, check_loras, lora_specs
from wan.settings import GenerationSettings
from wan.solvers import LIGHTNING
from wan.text2video import WanT2V
from wan.video import to_uint8_frames

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "models" / "loras" / "t2v-tiny-lightning"


def load_script():
    spec = importlib.util.spec_from_file_location("distill_tiny", REPO / "scripts" / "distill_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = load_script()
PROMPTS = ["a red square moving left", "a blue circle growing"]


@pytest.fixture(scope="module")
def pipe(test_config) -> WanT2V:
    return WanT2V(test_config, as_components(tiny_parts(seed=0)))


def args(**overrides) -> Namespace:
    return Namespace(**{"frame_num": 5, "teacher_steps": 6, **overrides})


def test_teacher_states_start_at_the_seed_noise_and_end_at_the_teachers_latent(pipe):
    states = script.teacher_states(pipe, PROMPTS, [7, 8], args(), batch=2)
    assert states.shape[:2] == (2, LIGHTNING.steps + 1)
    for i, (prompt, seed) in enumerate(zip(PROMPTS, [7, 8], strict=True)):
        settings = GenerationSettings(prompt=prompt, seed=seed, frame_num=5, sample_steps=6)
        context = pipe.encode_text([prompt, ""])
        teacher = pipe.sample(settings, context[:1], context[1:], progress=False)
        torch.testing.assert_close(states[i, 0], script.initial_noise(pipe, settings.resolved(pipe.config), seed)[0])
        torch.testing.assert_close(states[i, -1], teacher.latents[0], rtol=1e-4, atol=1e-4)  # cond+uncond batched


def test_the_student_rollout_is_the_products_euler_distill_loop(pipe):
    """With the LoRA at its initial zero, the training rollout and a --preset lightning run agree."""
    states = script.teacher_states(pipe, PROMPTS[:1], [3], args(), batch=1)
    contexts = pipe.encode_text(PROMPTS[:1])
    own = script.rollout(pipe, states, contexts)
    settings = GenerationSettings(
        prompt=PROMPTS[0], seed=3, frame_num=5, guide_scale_high=1.0, guide_scale_low=1.0, **_lightning()
    )
    context = pipe.encode_text([PROMPTS[0], ""])
    run = pipe.sample(settings, context[:1], context[1:], progress=False)
    torch.testing.assert_close(own[0, -1], run.latents[0], rtol=1e-4, atol=1e-4)
    assert (run.high_noise_steps, run.low_noise_steps) == (2, 2)
    assert script.step_experts() == [HIGH, HIGH, LOW, LOW]


def _lightning() -> dict:
    d = LIGHTNING.generation_defaults()
    return {"sample_solver": d["sample_solver"], "sample_steps": d["sample_steps"], "sample_shift": d["sample_shift"]}


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="the distilled pair is not shipped in this checkout")
def test_the_shipped_pair_loads_by_folder_and_beats_the_base_at_4_steps():
    config = load_task_config("t2v-tiny")
    ckpt = REPO / "models" / "t2v-tiny"
    specs = lora_specs({"lora_dir": str(SHIPPED), "task": "t2v-tiny"})
    assert [(s.path.name, s.experts) for s in specs] == [
        ("high_noise_model.safetensors", (HIGH,)),
        ("low_noise_model.safetensors", (LOW,)),
    ]
    assert all(s.path.stat().st_size < 2 * 2**20 for s in specs)
    prompt = "a red square moving left"
    fast = dict(prompt=prompt, seed=5, frame_num=9, guide_scale_high=1.0, guide_scale_low=1.0, **_lightning())
    base = WanT2V.from_pretrained(config, ckpt)
    teacher = to_uint8_frames(
        base.generate(GenerationSettings(prompt=prompt, seed=5, frame_num=9), progress=False).video
    )
    plain = to_uint8_frames(base.generate(GenerationSettings(**fast), progress=False).video)
    student = WanT2V.from_pretrained(config, ckpt)
    apply_loras(student, check_loras(specs, ckpt_dir=ckpt))
    distilled = to_uint8_frames(student.generate(GenerationSettings(**fast), progress=False).video)
    assert psnr(distilled, teacher) > psnr(plain, teacher) + 3.0


def test_the_tuning_set_shares_no_prompt_or_seed_with_the_held_out_set_or_the_training_seeds():
    from evaluation.tiny_world import Caption, is_held_out

    tuning = script.eval_prompts(Namespace(eval_set="tuning", eval_prompts=32, base_seed=0))
    held_out = script.eval_prompts(Namespace(eval_set="held_out", eval_prompts=32, base_seed=0))
    assert len(tuning) == len(held_out) == 32
    assert not any(is_held_out(Caption.parse(text)) for text, _ in tuning)
    assert {text for text, _ in tuning}.isdisjoint(text for text, _ in held_out)
    train_seeds = range(script.TRAIN_SEED_BASE, script.TUNING_SEED_BASE)
    assert not any(seed in train_seeds or seed < 32 for _, seed in tuning)
    assert [seed for _, seed in held_out] == list(range(32))
