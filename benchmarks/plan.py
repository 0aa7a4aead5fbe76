"""What a run will do, read from the engine's own plan: steps per expert, forwards, sequence lengths.

The benchmarks never re-derive the sampling plan or the token geometry: ``step_plan`` and
``sequence_lengths`` are the only two places that ask the engine (``wan.plan.build_plan``) for them.
The 40-step projection extends a short measured run to the released schedule with that plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wan.config import HIGH, LOW, TaskConfig
from wan.plan import StepPlan, build_plan
from wan.settings import GenerationSettings

FULL_STEPS = 40
"""The released schedule: 26 high-noise + 14 low-noise steps at shift 12."""
GUIDE_HIGH, GUIDE_LOW = 4.0, 3.0
PROJECTION_METHOD = (
    "measured text_encoding + vae_decode + for each expert: its measured stage seconds + (forwards of the real "
    "40-step plan - forwards measured) x its steady-state seconds per forward (median over its steps after its "
    "first one, whose one-time costs stay in the measured stage)"
)


@dataclass(frozen=True)
class Workload:
    """The video every mode and the peer make: same task, prompt, size, frames and seed."""

    task: TaskConfig
    prompt: str
    size: str
    frame_num: int
    seed: int
    steps: int  # of the timed run
    warmup_steps: int

    def settings(self, steps: int, fields: dict[str, Any]) -> GenerationSettings:
        """Our engine's settings for a run of ``steps`` steps with a mode's generation ``fields``."""
        return GenerationSettings(prompt=self.prompt, seed=self.seed, sample_steps=steps, **fields)


def step_plan(config: TaskConfig, steps: int, fields: dict[str, Any]) -> list[StepPlan]:
    """The per-step plan (expert, guidance, CFG or cond-only) the engine follows for ``steps`` steps.

    The engine's own plan (``wan.plan.build_plan``): nothing in the benchmarks builds a schedule.
    ``fields``: generation settings that change the plan (CFG truncation).
    """
    settings = GenerationSettings(
        prompt="plan", sample_steps=steps, guide_scale_high=GUIDE_HIGH, guide_scale_low=GUIDE_LOW, **fields
    )
    return list(build_plan(settings, config).steps)


def sequence_lengths(config: TaskConfig, size: str, frame_num: int) -> dict[str, int]:
    """Tokens an expert sees per forward at ``size`` and ``frame_num``: all latent frames, and the half frames
    of half-frame generation; read from the engine's plan (patch size, VAE stride, half-frame count)."""
    settings = GenerationSettings(prompt="plan", size=size, frame_num=frame_num, half_frame=True)
    full, half = build_plan(settings, config).sequence_lengths
    return {"full": full, "half": half}


def scaled_generation(fields: dict[str, Any], steps: int) -> dict[str, Any]:
    """A preset's generation defaults (set for 40 steps) at ``steps``: CFG truncation scaled, at least 1 step."""
    return {
        k: max(1, round(v * steps / FULL_STEPS)) if k.startswith("cfg_truncate") and v else v for k, v in fields.items()
    }


def plan_summary(plan: list[StepPlan]) -> dict[str, Any]:
    return {
        "high_noise_steps": sum(p.expert == HIGH for p in plan),
        "low_noise_steps": sum(p.expert == LOW for p in plan),
        "forwards": {e: sum(p.forwards for p in plan if p.expert == e) for e in (HIGH, LOW)},
        "cond_only_steps": sum(not p.use_cfg for p in plan),
    }


def project_40(measured: dict[str, Any], plan40: list[StepPlan]) -> dict[str, Any]:
    """The labelled 40-step end-to-end projection of one measured run (``PROJECTION_METHOD``)."""
    summary = plan_summary(plan40)
    stages = dict(measured["stages"])
    for expert, stage in ((HIGH, "high_noise"), (LOW, "low_noise")):
        extra = summary["forwards"][expert] - measured["forwards"][expert]
        rate = measured["steady_seconds_per_forward"][expert]
        if extra and rate is None:
            return {"label": "PROJECTION not possible: no measured step of the " + expert + " expert"}
        stages[stage] = stages.get(stage, 0.0) + extra * (rate or 0.0)
    return {
        "label": "PROJECTION of the 40-step run from this measured run, not a measured 40-step run",
        "method": PROJECTION_METHOD,
        **summary,
        "stages": stages,
        "seconds": sum(stages.values()),
    }
