"""What a run will do, read from the engine's own plan: steps per expert, forwards, sequence lengths.

The benchmarks never re-derive the sampling plan or the token geometry: ``step_plan`` and
``sequence_lengths`` are the only two places that ask the engine (``wan.plan.build_plan``) for them.
The projection extends a short measured run to the released schedule (40 steps for the A14B tasks,
50 for TI2V-5B) with that plan. Settings come from CLI-named fields (``settings_from_flags``), so a
preset's generation defaults (a distill schedule's steps, shift and guidance) enter as the CLI's do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wan.config import HIGH, LOW, TaskConfig
from wan.plan import StepPlan, build_plan
from wan.settings import GenerationSettings, settings_from_flags

PROJECTION_METHOD = (
    "measured text_encoding + vae_decode + for each expert: its measured stage seconds + (forwards of the "
    "released plan - forwards measured) x its steady-state seconds per forward (median over its steps after its "
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
    steps: int  # of the timed run, unless a mode's schedule fixes them (a distill preset's 4)
    warmup_steps: int
    image: Path | None = None  # the conditioning image of an image task

    def settings(self, steps: int, fields: dict[str, Any]) -> GenerationSettings:
        """Our engine's settings for a run of ``steps`` steps with a mode's generation ``fields`` (CLI-named; a
        ``sample_steps`` there wins, as a preset's fixed schedule does on the command line)."""
        flags = {"prompt": self.prompt, "sample_steps": steps, **fields, "image": self.image and str(self.image)}
        return settings_from_flags(flags, self.seed)


def mode_steps(fields: dict[str, Any], steps: int) -> int:
    """The steps a mode runs: its schedule's where fixed (``sample_steps`` in ``fields``), else ``steps``."""
    return fields.get("sample_steps") or steps


def released_steps(config: TaskConfig) -> int:
    """The task's released step count (40 for the A14B tasks, 50 for TI2V-5B): the projection's target."""
    return config.sample_steps


def step_plan(config: TaskConfig, steps: int, fields: dict[str, Any]) -> list[StepPlan]:
    """The per-step plan (expert, guidance, CFG or cond-only) the engine follows for ``steps`` steps.

    The engine's own plan (``wan.plan.build_plan``): nothing in the benchmarks builds a schedule.
    ``fields``: CLI-named generation settings that change the plan (CFG truncation, a distill schedule).
    """
    settings = settings_from_flags({"prompt": "plan", "sample_steps": steps, **fields}, seed=0)
    return list(build_plan(settings, config).steps)


def sequence_lengths(config: TaskConfig, size: str, frame_num: int) -> dict[str, int]:
    """Tokens an expert sees per forward at ``size`` and ``frame_num``: all latent frames, and the half frames
    of half-frame generation where the task has an expert switch (else ``half`` is None); read from the
    engine's plan (patch size, VAE stride, half-frame count)."""
    switch = config.boundary is not None
    settings = GenerationSettings(prompt="plan", size=size, frame_num=frame_num, half_frame=switch)
    lengths = build_plan(settings, config).sequence_lengths  # (full, half) with half frames, else (full,)
    return {"full": lengths[0], "half": lengths[-1] if switch else None}


def scaled_generation(fields: dict[str, Any], steps: int, released: int = 40) -> dict[str, Any]:
    """A preset's generation defaults (set for the ``released`` steps) at ``steps``: CFG truncation scaled, at
    least 1 step."""
    return {
        k: max(1, round(v * steps / released)) if k.startswith("cfg_truncate") and v else v for k, v in fields.items()
    }


def plan_summary(plan: list[StepPlan]) -> dict[str, Any]:
    return {
        "high_noise_steps": sum(p.expert == HIGH for p in plan),
        "low_noise_steps": sum(p.expert == LOW for p in plan),
        "forwards": {e: sum(p.forwards for p in plan if p.expert == e) for e in (HIGH, LOW)},
        "cond_only_steps": sum(not p.use_cfg for p in plan),
    }


def project_released(measured: dict[str, Any], plan: list[StepPlan]) -> dict[str, Any]:
    """The labelled end-to-end projection of one measured run to the released ``plan`` (``PROJECTION_METHOD``)."""
    summary = plan_summary(plan)
    stages = dict(measured["stages"])
    for expert, stage in ((HIGH, "high_noise"), (LOW, "low_noise")):
        extra = summary["forwards"][expert] - measured["forwards"].get(expert, 0)
        rate = measured["steady_seconds_per_forward"].get(expert)
        if extra and rate is None:
            return {"label": "PROJECTION not possible: no measured step of the " + expert + " expert"}
        stages[stage] = stages.get(stage, 0.0) + extra * (rate or 0.0)
    return {
        "label": f"PROJECTION of the released {len(plan)}-step run from this measured run, not a measured run",
        "method": PROJECTION_METHOD,
        **summary,
        "stages": stages,
        "seconds": sum(stages.values()),
    }
