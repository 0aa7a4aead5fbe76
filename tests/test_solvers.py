import pytest
import torch

from wan.choices import SOLVERS
from wan.config import HIGH, LOW
from wan.errors import ConfigError
from wan.frames import complete_repeat
from wan.plan import plan_steps
from wan.solvers import (
    LIGHTNING,
    complete_history,
    distill_base_sigmas,
    make_scheduler,
    restart_history,
    shift_sigma,
    step_sigmas,
)


@pytest.mark.parametrize("solver", SOLVERS)
def test_every_solver_gives_a_decreasing_flow_schedule(solver):
    scheduler = make_scheduler(solver, 12.0)
    scheduler.set_timesteps(40)
    sigmas = step_sigmas(scheduler)
    assert len(scheduler.timesteps) == 40 and len(sigmas) == 41
    assert sigmas[-1] == 0.0 and all(a > b for a, b in zip(sigmas, sigmas[1:], strict=False))


def test_unknown_solver_is_refused():
    with pytest.raises(ConfigError, match="unknown --sample_solver"):
        make_scheduler("ddim", 12.0)


def run_two_steps(scheduler, frames=3):
    scheduler.set_timesteps(10)
    x = torch.randn(1, 2, frames, 2, 2)
    for t in scheduler.timesteps[:2]:
        x = scheduler.step(torch.randn_like(x), t, x, return_dict=False)[0]
    return x


def test_history_is_completed_with_the_latent_frame_map():
    scheduler = make_scheduler("unipc", 12.0)
    x = run_two_steps(scheduler)
    complete_history(scheduler, lambda t: complete_repeat(t, 5))
    assert all(o is None or o.shape[2] == 5 for o in scheduler.model_outputs)
    assert scheduler.last_sample.shape[2] == 5
    full = complete_repeat(x, 5)
    out = scheduler.step(torch.randn_like(full), scheduler.timesteps[2], full, return_dict=False)[0]
    assert out.shape == full.shape


def test_restart_makes_the_next_step_first_order():
    scheduler = make_scheduler("unipc", 12.0)
    run_two_steps(scheduler)
    restart_history(scheduler)
    assert scheduler.lower_order_nums == 0 and scheduler.last_sample is None
    full = torch.randn(1, 2, 5, 2, 2)
    out = scheduler.step(torch.randn_like(full), scheduler.timesteps[2], full, return_dict=False)[0]
    assert out.shape == full.shape and scheduler.this_order == 1


def test_the_distill_grid_is_the_releases_timesteps():
    """LightX2V's denoising_step_list 1000, 750, 500, 250 with sample_shift 5 (Wan2.2-Lightning: Euler, 4 steps)."""
    scheduler = make_scheduler("euler_distill", LIGHTNING.shift)
    scheduler.set_timesteps(LIGHTNING.steps)
    base = [1000 * s for s in distill_base_sigmas(4)]
    assert base == [1000.0, 750.0, 500.0, 250.0]
    expected = [shift_sigma(t / 1000, 5.0) * 1000 for t in base]
    torch.testing.assert_close(scheduler.timesteps, torch.tensor(expected))
    assert LIGHTNING.timesteps() == pytest.approx(expected) and LIGHTNING.sigmas()[-1] == 0.0
    assert step_sigmas(scheduler) == pytest.approx(LIGHTNING.sigmas())
    plain = make_scheduler("euler", LIGHTNING.shift)
    plain.set_timesteps(4)
    assert not torch.allclose(plain.timesteps, scheduler.timesteps)  # why the distill grid is its own solver


@pytest.mark.parametrize("boundary", [0.875, 0.9])  # t2v-A14B, i2v-A14B
def test_the_timestep_router_splits_the_grid_as_the_releases_step_index(boundary):
    plans = plan_steps(LIGHTNING.timesteps(), boundary=boundary, guide_scale_high=1.0, guide_scale_low=1.0)
    assert [p.expert for p in plans] == [HIGH] * LIGHTNING.boundary_step + [LOW] * (4 - LIGHTNING.boundary_step)
    assert not any(p.use_cfg for p in plans)


def test_distill_euler_steps_are_plain_euler_to_zero():
    """x_{k+1} = x_k + (sigma_{k+1} - sigma_k) v: a constant velocity lands exactly on x_0 = x_1 - v."""
    scheduler = make_scheduler("euler_distill", 5.0)
    scheduler.set_timesteps(4)
    noise, velocity = torch.randn(1, 2, 3, 2, 2), torch.randn(1, 2, 3, 2, 2)
    x = noise
    for t in scheduler.timesteps:
        x = scheduler.step(velocity, t, x, return_dict=False)[0]
    torch.testing.assert_close(x, noise - velocity)


def test_the_preset_fills_the_release_flags():
    assert LIGHTNING.generation_defaults() == {
        "sample_solver": "euler_distill",
        "sample_steps": 4,
        "sample_shift": 5.0,
        "sample_guide_scale": 1.0,
    }


def test_the_lightning_preset_is_the_releases_schedule():
    """--preset lightning fills exactly the schedule the distill LoRA pairs were trained on."""
    from wan.levers.presets import PRESETS

    assert dict(PRESETS["lightning"].generation) == LIGHTNING.generation_defaults()
