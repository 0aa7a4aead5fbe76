"""The per-step plan of a Wan2.2 MoE sampling run: which expert, which guide scale, CFG or cond-only.

The router sends step ``t`` to the high-noise expert when ``t >= boundary * num_train_timesteps``
and to the low-noise expert otherwise. CFG truncation drops the unconditional pass on chosen
steps, so those steps cost one forward instead of two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from wan.config import ConfigError

HIGH = "high_noise"
LOW = "low_noise"


@dataclass(frozen=True)
class StepPlan:
    index: int
    timestep: float
    expert: str  # HIGH or LOW
    guide_scale: float
    use_cfg: bool  # False: conditional pass only
    sigma: float | None = None  # the solver's sigma at this step (cache hooks read it)
    steps: int | None = None  # the schedule's step count

    @property
    def forwards(self) -> int:
        return 2 if self.use_cfg else 1


def route(timestep: float, boundary: float, num_train_timesteps: int = 1000) -> str:
    """The expert for ``timestep``: high-noise at or above the boundary."""
    return HIGH if timestep >= boundary * num_train_timesteps else LOW


def plan_steps(
    timesteps: Sequence[float],
    *,
    boundary: float,
    guide_scale_high: float,
    guide_scale_low: float,
    num_train_timesteps: int = 1000,
    cfg_truncate_steps: int = 0,
    cfg_truncate_high_noise_steps: int = 0,
    sigmas: Sequence[float] | None = None,
) -> list[StepPlan]:
    """Plan every step.

    ``sigmas``: the solver's sigma at each step (default: timestep / num_train_timesteps).

    ``cfg_truncate_steps`` N: the last N steps of the schedule run cond-only.
    ``cfg_truncate_high_noise_steps`` M: the last M high-noise steps before the switch run cond-only.
    A guide scale of 1 or less also means cond-only (CFG would change nothing or is off).
    """
    if cfg_truncate_steps < 0 or cfg_truncate_high_noise_steps < 0:
        raise ConfigError("--cfg_truncate_steps and --cfg_truncate_high_noise_steps must be >= 0")
    if cfg_truncate_steps > len(timesteps):
        raise ConfigError(
            f"--cfg_truncate_steps {cfg_truncate_steps} exceeds the {len(timesteps)} sampling steps; use at most that"
        )
    experts = [route(float(t), boundary, num_train_timesteps) for t in timesteps]
    high_steps = [i for i, e in enumerate(experts) if e == HIGH]
    if cfg_truncate_high_noise_steps > len(high_steps):
        raise ConfigError(
            f"--cfg_truncate_high_noise_steps {cfg_truncate_high_noise_steps} exceeds the {len(high_steps)} "
            "high-noise steps of this schedule; use at most that"
        )
    cond_only = set(range(len(timesteps) - cfg_truncate_steps, len(timesteps)))
    if cfg_truncate_high_noise_steps:
        cond_only.update(high_steps[-cfg_truncate_high_noise_steps:])
    sigmas = [float(t) / num_train_timesteps for t in timesteps] if sigmas is None else sigmas
    plans = []
    for i, (t, expert) in enumerate(zip(timesteps, experts, strict=True)):
        scale = guide_scale_high if expert == HIGH else guide_scale_low
        use_cfg = i not in cond_only and scale > 1.0
        plans.append(StepPlan(i, float(t), expert, scale, use_cfg, float(sigmas[i]), len(timesteps)))
    return plans


def apply_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + g (cond - uncond)."""
    return uncond + scale * (cond - uncond)
