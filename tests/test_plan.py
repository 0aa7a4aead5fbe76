"""wan.plan: the step plan (router, guidance, CFG truncation) and the run plan built once from settings."""

import dataclasses

import pytest

from wan.config import HIGH, LOW, load_task_config
from wan.errors import ConfigError
from wan.plan import build_plan, plan_steps, route
from wan.settings import GenerationSettings
from wan.solvers import make_scheduler


def a14b_timesteps(steps: int = 40, shift: float = 12.0) -> list[float]:
    scheduler = make_scheduler("unipc", shift)
    scheduler.set_timesteps(steps)
    return scheduler.timesteps.tolist()


def plan(**kw):
    return plan_steps(a14b_timesteps(), boundary=0.875, guide_scale_high=4.0, guide_scale_low=3.0, **kw)


def test_router_boundary():
    assert route(875, 0.875) == HIGH
    assert route(874.9, 0.875) == LOW
    assert route(999, 0.875) == HIGH


def test_released_schedule_splits_26_high_14_low():
    plans = plan()
    experts = [p.expert for p in plans]
    assert experts == [HIGH] * 26 + [LOW] * 14
    assert {p.guide_scale for p in plans if p.expert == HIGH} == {4.0}
    assert {p.guide_scale for p in plans if p.expert == LOW} == {3.0}
    assert sum(p.forwards for p in plans) == 80


def test_every_plan_knows_its_sigma_and_the_step_count():
    """Cache hooks read them from the cache context (SeaCache's filter needs the exact sigma)."""
    scheduler = make_scheduler("unipc", 12.0)
    scheduler.set_timesteps(40)
    sigmas = scheduler.sigmas.tolist()
    plans = plan(sigmas=sigmas)
    assert [p.steps for p in plans] == [40] * 40 and [p.sigma for p in plans] == sigmas[:-1]
    assert all(abs(p.sigma - s) < 2e-3 for p, s in zip(plan(), sigmas, strict=False))  # timestep / 1000 without


def test_cfg_truncation_marks_exactly_the_chosen_steps():
    plans = plan(cfg_truncate_steps=5, cfg_truncate_high_noise_steps=3)
    cond_only = [p.index for p in plans if not p.use_cfg]
    assert cond_only == [23, 24, 25, 35, 36, 37, 38, 39]
    assert sum(p.forwards for p in plans) == 80 - 8


def test_overlapping_truncations_count_once():
    plans = plan_steps(
        [999, 990, 900, 500],
        boundary=0.875,
        guide_scale_high=4,
        guide_scale_low=3,
        cfg_truncate_steps=2,
        cfg_truncate_high_noise_steps=1,
    )
    assert [p.use_cfg for p in plans] == [True, True, False, False]


def test_guide_scale_one_means_cond_only():
    plans = plan_steps([999, 500], boundary=0.875, guide_scale_high=1.0, guide_scale_low=3.0)
    assert [p.use_cfg for p in plans] == [False, True]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"cfg_truncate_steps": 41}, "exceeds the 40 sampling steps"),
        ({"cfg_truncate_high_noise_steps": 27}, "exceeds the 26 high-noise steps"),
        ({"cfg_truncate_steps": -1}, ">= 0"),
    ],
)
def test_bad_truncation_is_refused(kw, message):
    with pytest.raises(ConfigError, match=message):
        plan(**kw)


def test_half_frame_flag_alone_halves_every_high_noise_step():
    """The seed's system: the released 40 steps at 480p, 81 frames: 26 high-noise steps on 11 of 21 latent
    frames, completed at the switch; 0.69x the tokens of the full run."""
    config = load_task_config("t2v-A14B")
    settings = GenerationSettings(prompt="x", size="832*480", seed=0, half_frame=True)
    plan = build_plan(settings, config)
    frames = [plan.step_frames(i) for i in range(len(plan.steps))]
    assert frames == [11] * 26 + [21] * 14
    assert plan.sequence_lengths == (32760, 11 * 1560)
    full = build_plan(GenerationSettings(prompt="x", size="832*480", seed=0), config)
    assert full.sequence_lengths == (32760,)
    ratio = sum(plan.tokens().values()) / sum(full.tokens().values())
    assert ratio == pytest.approx(0.690, abs=1e-3)
    assert plan.forwards() == full.forwards() == {HIGH: 52, LOW: 28}


def test_a_half_frame_plan_without_low_noise_steps_is_refused(test_config):
    config = dataclasses.replace(test_config, boundary=0.0)  # every step goes to the high-noise expert
    with pytest.raises(ConfigError, match="half-frame generation needs low-noise steps"):
        build_plan(GenerationSettings(prompt="x", half_frame=True), config)


def test_the_plan_records_what_the_loop_runs(test_config):
    plan = build_plan(GenerationSettings(prompt="x", cfg_truncate_steps=2), test_config)
    assert len(plan.steps) == len(plan.timesteps) == test_config.sample_steps
    assert len(plan.sigmas) == test_config.sample_steps + 1
    assert [s.use_cfg for s in plan.steps][-2:] == [False, False]
    assert plan.geometry.tokens_per_frame == 4 and plan.geometry.frames == 5  # 32*32, 17 frames
