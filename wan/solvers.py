"""Flow-matching solvers from diffusers, and what half-frame generation does to their history.

UniPC (as released) and DPM++ are multistep: they keep the last model outputs and sample, whose
frame count changes at the half-frame switch. Either the history is completed with the same
frame map as the latent (it stays consistent with a latent that was completed in x_t space), or
the solver restarts at first order (right after re-noising, which leaves the old trajectory).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from wan.choices import SOLVERS
from wan.errors import ConfigError


def make_scheduler(solver: str, shift: float, num_train_timesteps: int = 1000) -> SchedulerMixin:
    """A diffusers flow-matching scheduler with the released sigma shift."""
    if solver == "unipc":
        return UniPCMultistepScheduler(
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=shift,
            num_train_timesteps=num_train_timesteps,
        )
    if solver == "dpm++":
        return DPMSolverMultistepScheduler(
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=shift,
            algorithm_type="dpmsolver++",
            solver_order=2,
            num_train_timesteps=num_train_timesteps,
        )
    if solver == "euler":
        return FlowMatchEulerDiscreteScheduler(shift=shift, num_train_timesteps=num_train_timesteps)
    raise ConfigError(f"unknown --sample_solver {solver!r}; choose one of: {', '.join(SOLVERS)}")


def step_sigmas(scheduler: SchedulerMixin) -> list[float]:
    """Sigma at each step (after ``set_timesteps``), plus the final 0."""
    return [float(s) for s in scheduler.sigmas]


def complete_history(scheduler: SchedulerMixin, complete: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Map every stored tensor of a multistep solver through ``complete`` (the latent's frame map)."""
    outputs = getattr(scheduler, "model_outputs", None)
    if outputs is not None:
        scheduler.model_outputs = [None if o is None else complete(o) for o in outputs]
    if getattr(scheduler, "last_sample", None) is not None:
        scheduler.last_sample = complete(scheduler.last_sample)


def restart_history(scheduler: SchedulerMixin) -> None:
    """Forget the multistep history so the next step is first order with no corrector."""
    if getattr(scheduler, "model_outputs", None) is not None:
        scheduler.model_outputs = [None] * len(scheduler.model_outputs)
        scheduler.lower_order_nums = 0
    if hasattr(scheduler, "last_sample"):
        scheduler.last_sample = None
    if hasattr(scheduler, "timestep_list"):
        scheduler.timestep_list = [None] * len(scheduler.timestep_list)
