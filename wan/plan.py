"""The run plan: everything about one video's sampling that follows from its settings, computed once.

``build_plan`` turns resolved settings and a task config into a frozen ``RunPlan``: the solver's
timesteps and sigmas, and for every step the expert the router picks, its guide scale, whether it
runs the unconditional pass, and how many latent frames it sees (half-frame generation). The loop
(``wan.text2video``), validation, placement, the multi-GPU checks and the benchmarks all read this
one object; nothing else derives the schedule, the sequence lengths or the token counts.

The router sends step ``t`` to the high-noise expert when ``t >= boundary * num_train_timesteps``
and to the low-noise expert otherwise. CFG truncation drops the unconditional pass on chosen steps,
so those steps cost one forward instead of two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from wan.config import HIGH, LOW, TaskConfig
from wan.errors import ConfigError
from wan.frames import half_frame_count, latent_frame_count
from wan.half_frame import HalfFramePlan
from wan.settings import GenerationSettings


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


def route(timestep: float, boundary: float | None, num_train_timesteps: int = 1000) -> str:
    """The expert for ``timestep``: high-noise at or above the boundary; a one-expert task (no boundary)
    runs every step on its only expert, named HIGH."""
    if boundary is None:
        return HIGH
    return HIGH if timestep >= boundary * num_train_timesteps else LOW


def plan_steps(
    timesteps: Sequence[float],
    *,
    boundary: float | None,
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


@dataclass(frozen=True)
class Geometry:
    """The latent's shape in frames and patches: what sequence lengths follow from a size and frame count."""

    frames: int  # full latent frames T
    height: int  # latent rows
    width: int  # latent columns
    tokens_per_frame: int  # DiT tokens of one latent frame (after patching)
    patch_size: tuple[int, int, int] = (1, 2, 2)
    pixels: tuple[int, int] = (0, 0)  # the video's (width, height)

    @property
    def full_tokens(self) -> int:
        return self.frames * self.tokens_per_frame


def video_size(config: TaskConfig, settings: GenerationSettings) -> tuple[int, int]:
    """(width, height) of the video: ``--size``, or with an image its area in the image's shape
    (``wan.image``, as the official CLI sizes image-to-video)."""
    if settings.image is None:
        return config.parse_size(settings.size)
    from wan.image import load_image
    from wan.image import video_size as image_video_size

    return image_video_size(config, settings.size, load_image(settings.image))


def geometry(config: TaskConfig, settings: GenerationSettings) -> Geometry:
    """The latent geometry of resolved ``settings`` under ``config``'s VAE stride and patch size."""
    width, height = video_size(config, settings)
    stride_t, stride_h, stride_w = config.vae_stride
    _, patch_h, patch_w = config.patch_size
    if height % (stride_h * patch_h) or width % (stride_w * patch_w):
        step_w, step_h = stride_w * patch_w, stride_h * patch_h
        raise ConfigError(f"size {settings.size} must be a multiple of {step_w} in width and {step_h} in height")
    rows, columns = height // stride_h, width // stride_w
    return Geometry(
        frames=latent_frame_count(settings.frame_num, stride_t),
        height=rows,
        width=columns,
        tokens_per_frame=(rows // patch_h) * (columns // patch_w),
        patch_size=tuple(config.patch_size),
        pixels=(width, height),
    )


@dataclass(frozen=True)
class RunPlan:
    """One video's sampling, fixed before anything loads: the schedule, the steps and the frame counts."""

    settings: GenerationSettings  # resolved
    geometry: Geometry
    timesteps: tuple[float, ...]
    sigmas: tuple[float, ...]  # one per step, plus the final sigma
    steps: tuple[StepPlan, ...]
    frames: HalfFramePlan

    def step_frames(self, index: int) -> int:
        return self.frames.frames(index)

    def step_tokens(self, index: int) -> int:
        return self.frames.frames(index) * self.geometry.tokens_per_frame

    @property
    def sequence_lengths(self) -> tuple[int, ...]:
        """The token counts the experts see in this run, the full length first."""
        lengths = [self.geometry.full_tokens]
        if self.settings.half_frame:
            lengths.append(half_frame_count(self.geometry.frames) * self.geometry.tokens_per_frame)
        return tuple(lengths)

    def forwards(self) -> dict[str, int]:
        """DiT forwards per expert over the run."""
        counts = {HIGH: 0, LOW: 0}
        for step in self.steps:
            counts[step.expert] += step.forwards
        return counts

    def tokens(self) -> dict[str, int]:
        """Tokens processed per expert over the run (forwards times each step's sequence length)."""
        counts = {HIGH: 0, LOW: 0}
        for step in self.steps:
            counts[step.expert] += step.forwards * self.step_tokens(step.index)
        return counts

    def expert_steps(self, expert: str) -> int:
        return sum(step.expert == expert for step in self.steps)


def build_plan(settings: GenerationSettings, config: TaskConfig) -> RunPlan:
    """The plan of ``settings`` (resolved here) under ``config``; raises ``ConfigError`` for a schedule it
    cannot run (a half-frame window outside the high-noise phase, truncation past the steps)."""
    from wan.solvers import make_scheduler, step_sigmas

    s = settings.resolved(config)
    shape = geometry(config, s)
    scheduler = make_scheduler(s.sample_solver, s.sample_shift, config.num_train_timesteps)
    scheduler.set_timesteps(s.sample_steps, device="cpu")
    timesteps = tuple(float(t) for t in scheduler.timesteps.tolist())
    sigmas = tuple(step_sigmas(scheduler))
    steps = plan_steps(
        timesteps,
        boundary=config.boundary,
        guide_scale_high=s.guide_scale_high,
        guide_scale_low=s.guide_scale_low,
        num_train_timesteps=config.num_train_timesteps,
        cfg_truncate_steps=s.cfg_truncate_steps,
        cfg_truncate_high_noise_steps=s.cfg_truncate_high_noise_steps,
        sigmas=sigmas,
    )
    frames = HalfFramePlan.build(
        s.half_frame_steps if s.half_frame else None,
        [step.expert for step in steps],
        shape.frames,
        s.frame_completion,
        s.half_frame_positions,
    )
    return RunPlan(s, shape, timesteps, sigmas, tuple(steps), frames)
