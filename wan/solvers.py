"""Flow-matching solvers from diffusers, the few-step schedule of the distill LoRAs, and what
half-frame generation does to a solver's history.

UniPC (as released) and DPM++ are multistep: they keep the last model outputs and sample, whose
frame count changes at the half-frame switch. Either the history is completed with the same
frame map as the latent (it stays consistent with a latent that was completed in x_t space), or
the solver restarts at first order (right after re-noising, which leaves the old trajectory).

``euler_distill`` is the grid the public 4-step distill LoRAs (Wan2.2-Lightning, LightX2V) were
trained on and are sampled with: N timesteps evenly spaced from 1000 down (1000, 750, 500, 250 for
N = 4, LightX2V's ``denoising_step_list``), the sigma shift applied to them (5: sigmas 1, 0.9375,
0.8333, 0.625, then 0), and plain Euler steps. diffusers' ``FlowMatchEulerDiscreteScheduler`` makes
a different grid from a step count alone (1, 0.91, 0.72, 0.02 at shift 5), so a distill LoRA sampled
with ``--sample_solver euler`` runs at timesteps it never saw; this solver hands diffusers the
distilled sigmas instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from wan.choices import SOLVERS
from wan.errors import ConfigError


@dataclass(frozen=True)
class FewStepSchedule:
    """A step-distilled sampling schedule: what a distill LoRA pair was trained to run.

    ``boundary_step``: the first step of the low-noise expert, as the releases split the steps
    (LightX2V's ``boundary_step_index``); Wan2.2-Lightning routes by timestep at the task's boundary
    instead, which gives the same split for this grid on t2v-A14B (0.875) and i2v-A14B (0.900).
    """

    name: str
    steps: int
    shift: float
    solver: str
    boundary_step: int
    guide_scale: float

    def timesteps(self, num_train_timesteps: int = 1000) -> list[float]:
        """The timesteps of each step, shift applied (1000, 937.5, 833.3, 625 for the 4-step release)."""
        return [s * num_train_timesteps for s in distill_sigmas(self.steps, self.shift)[:-1]]

    def sigmas(self) -> list[float]:
        """Sigma at each step, plus the final 0."""
        return distill_sigmas(self.steps, self.shift)

    def generation_defaults(self) -> dict[str, float | int | str]:
        """The generation flags (argparse dests) a preset of this schedule fills where the user gave none."""
        return {
            "sample_solver": self.solver,
            "sample_steps": self.steps,
            "sample_shift": self.shift,
            "sample_guide_scale": self.guide_scale,
        }


LIGHTNING = FewStepSchedule("lightning", steps=4, shift=5.0, solver="euler_distill", boundary_step=2, guide_scale=1.0)
"""Wan2.2-Lightning's and LightX2V's 4-step T2V/I2V-A14B schedule: Euler on the timesteps 1000, 750,
500, 250 shifted by 5, two steps per expert, no CFG (guide scale 1: one forward per step)."""


def distill_base_sigmas(steps: int) -> list[float]:
    """N sigmas evenly spaced from 1 down, before the shift: 1, 0.75, 0.5, 0.25 for N = 4."""
    if steps < 1:
        raise ConfigError(f"--sample_steps {steps}: the distill schedule needs at least 1 step")
    return [float(s) for s in np.linspace(1.0, 0.0, steps + 1)[:-1]]


def shift_sigma(sigma: float, shift: float) -> float:
    """The flow-matching time shift every Wan schedule applies: shift * s / (1 + (shift - 1) * s)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def distill_sigmas(steps: int, shift: float) -> list[float]:
    """The distill grid's sigma at each step, shift applied, plus the final 0."""
    return [shift_sigma(s, shift) for s in distill_base_sigmas(steps)] + [0.0]


class DistillEulerScheduler(FlowMatchEulerDiscreteScheduler):
    """diffusers' flow-matching Euler on the distill grid: ``set_timesteps(N)`` takes the N evenly spaced
    sigmas from 1 (not diffusers' linspace(1, 1/1000, N)); diffusers applies the shift and appends 0."""

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas=None, **kwargs) -> None:
        if sigmas is None:
            sigmas = distill_base_sigmas(num_inference_steps)
        super().set_timesteps(sigmas=sigmas, device=device, **kwargs)


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
    if solver == "euler_distill":
        return DistillEulerScheduler(shift=shift, num_train_timesteps=num_train_timesteps)
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
