import pytest
import torch

from wan.choices import SOLVERS
from wan.errors import ConfigError
from wan.frames import complete_repeat
from wan.solvers import complete_history, make_scheduler, restart_history, step_sigmas


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
