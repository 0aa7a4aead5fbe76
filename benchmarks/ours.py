"""Our modes: the engine built from a mode's options on the shared random parts, then timed end to end.

The engine is built the one way the product builds it (``wan.engine.build_engine``: placement sized
for the run, LoRAs, levers), handed the parts already in memory instead of a checkpoint folder.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.measure import ForwardCounter, Measurement, StepClock, now, reset_peak_memory
from benchmarks.modes import Mode, OverBudget, levers_of, timed_estimate
from benchmarks.plan import Workload, released_steps, scaled_generation
from benchmarks.weights import RandomParts
from wan.checkpoints import WanComponents
from wan.config import HIGH, LOW
from wan.engine import Engine, build_engine
from wan.frames import latent_frame_count
from wan.levers.compile import compile_seconds
from wan.levers.presets import preset_generation_defaults
from wan.lora import LoraFile
from wan.options import EngineOptions
from wan.plan import StepPlan, build_plan
from wan.text2video import GenerationResult

STAGES = ("text_encoding", "image_encoding", "high_noise", "low_noise", "completion", "vae_decode")
ONCE_PER_VIDEO = ("text_encoding", "image_encoding", "vae_decode")
"""Stages whose time does not grow with the steps (the budget check counts them once)."""


def mode_generation(mode: Mode, work: Workload, steps: int) -> dict:
    """The mode's CLI-named generation settings at ``steps`` (a preset's CFG truncation scaled to them)."""
    return scaled_generation(preset_generation_defaults(mode.preset), steps, released_steps(work.task))


def build_ours(
    mode: Mode, parts: RandomParts, work: Workload, device: torch.device, loras: tuple[LoraFile, ...] = ()
) -> tuple[Engine, dict, dict]:
    """The engine for ``mode`` on ``parts`` with ``loras`` fused, its setup seconds and what it is (placement,
    levers, settings)."""
    setup: dict[str, Any] = {}
    start = now(device)
    if mode.placement in ("offload", "stream"):  # a real load leaves the weights in CPU memory
        for module in parts.modules():
            module.to("cpu")
    else:  # built on the device; the placement decides where the text encoder waits
        for module in (parts.vae, *parts.experts.values()):
            module.to(device)
    setup["move_parts_s"] = now(device) - start
    levers, notes = levers_of(mode, device)
    options = EngineOptions(
        config=work.task,
        ckpt_dir=None,
        device=str(device),
        placement=mode.placement,
        convert_model_dtype=False,  # the parts are made in their load dtypes
        t5_cpu=False,
        preset=mode.preset,
        levers=levers,
        preset_notes=tuple(notes),
        loras=loras,
    )
    components = WanComponents(
        tokenizer=parts.tokenizer,
        text_encoder=parts.text_encoder,
        vae=parts.vae,
        high_noise_model=parts.experts[HIGH],
        low_noise_model=parts.experts.get(LOW),
        layout="diffusers",
    )
    generation = mode_generation(mode, work, work.steps)
    run = build_plan(work.settings(work.steps, generation), work.task)
    start = now(device)
    engine = build_engine(options, [run], components=components)
    built_s = now(device) - start
    setup["placement_s"] = engine.load_timings["load"]  # wrapping the given parts, then placing them
    if "lora_fuse" in engine.load_timings:
        setup["lora_fuse_s"] = engine.load_timings["lora_fuse"]
    setup["levers_s"] = built_s - sum(engine.load_timings.values())  # fp8 quantisation; compiling is in the warm-up
    if mode.vae_tiling:
        parts.vae.enable_tiling()
    info = {
        "kind": "ours",
        "placement": engine.pipe.placement.name,
        "placement_reason": engine.pipe.placement.reason,
        "levers": levers.as_dict(),
        "preset": mode.preset,
        "preset_notes": notes,
        "vae_tiling": parts.vae.use_tiling,  # the mode's, or the whole run's (--vae_tiling)
        "vae_dtype": str(parts.vae.dtype).removeprefix("torch."),  # after the levers: what the decode runs in
        "loras": [f.spec.path.name for f in loras],
        "generation": generation,
        "generation_released": preset_generation_defaults(mode.preset),
    }
    return engine, setup, info


def changes_experts(engine: Engine) -> bool:
    """Whether the engine left something on the experts that the next mode must not inherit.

    Attention backends are reset by ``RandomParts.reset_shared``; every other lever and block
    streaming's hooks stay, so the experts are rebuilt.
    """
    levers = engine.options.levers.as_dict()
    changed = any(value for name, value in levers.items() if name != "attention_backend")
    return changed or engine.pipe.placement.name == "block_stream"


def run_ours(
    engine: Engine,
    mode: Mode,
    work: Workload,
    counter: ForwardCounter,
    model_config: dict,
    device: torch.device,
    over_budget: Callable[[float], str | None],
) -> Measurement:
    """``Engine.generate`` (text + sampling + decode) after a warm-up; per-step marks from ``on_step``.

    ``over_budget(seconds)``: why the timed run, estimated from the warm-up, does not fit the time budget, or
    None; ``OverBudget`` with that line if it does not (the levers make a mode faster than the peer, so only its
    own warm-up tells)."""
    clock = StepClock(device, counter)

    def settings(steps: int):
        return work.settings(steps, mode_generation(mode, work, steps))

    def warm_up() -> tuple[float, float, float]:
        """A warm-up run: its seconds, the compiling counted in them, and the timed run's estimate from it."""
        compiled_before, start = compile_seconds(), now(device)
        warmup = engine.generate(settings(work.warmup_steps), progress=False)
        seconds, compile_s = now(device) - start, compile_seconds() - compiled_before
        fixed = sum(seconds for stage, seconds in warmup.timings.items() if stage in ONCE_PER_VIDEO)
        return seconds, compile_s, timed_estimate(seconds, compile_s, fixed, work.warmup_steps, work.steps)

    setup: dict[str, Any] = {}
    setup["warmup_s"], setup["warmup_compile_s"], estimate = warm_up()
    reason = over_budget(estimate)
    if reason and setup["warmup_compile_s"] > 0:
        # Compiling hides partly from dynamo's counter: a float8 warm-up of one step took 198 s, most of it
        # uncounted, and was taken for a 492-s timed run. A second, compiled warm-up tells.
        setup["second_warmup_s"], _, estimate = warm_up()
        reason = over_budget(estimate)
    if reason:
        raise OverBudget(reason)

    counter.reset()
    reset_peak_memory(device)

    def on_step(plan: StepPlan, _latents: torch.Tensor) -> None:
        clock.mark(plan.expert)

    start = now(device)
    clock.restart()
    result: GenerationResult = engine.generate(settings(work.steps), progress=False, on_step=on_step)
    end = now(device)
    expert, seconds, forwards = clock.marks[0]  # its mark started before text encoding
    clock.marks[0] = (expert, seconds - result.timings["text_encoding"], forwards)
    stages = {k: result.timings[k] for k in STAGES if k in result.timings}
    extra: dict[str, Any] = {}
    if computed := result.computed_forwards:  # filled under a step cache only
        counted = counter.summary(model_config)["forwards"]
        extra["computed_forwards"] = computed
        extra["skip_fraction"] = 1 - sum(computed.values()) / max(1, sum(counted.values()))
        extra["skip_note"] = "random weights: the skip decision says nothing about real checkpoints"
    finite = bool(torch.isfinite(result.video).all())
    return Measurement({}, setup, end - start, stages, clock, finite, extra, result.forwards)


def skip_cost(engine: Engine, work: Workload, model_config: dict, repeats: int, device: torch.device) -> dict:
    """Seconds of a forward that First Block Cache skips (all blocks but the first) vs a full one.

    Within one cache context the first call computes every block; a second call on the same input
    changes the first block's residual by 0, under any threshold, so the hooks skip the rest.
    The compute counter confirms which calls computed.
    """
    pipe, task = engine.pipe, work.task
    expert = pipe.experts[HIGH]
    width, height = task.parse_size(work.size)
    _, stride_h, stride_w = task.vae_stride
    frames = latent_frame_count(work.frame_num, task.vae_stride[0])
    channels = model_config["in_channels"]
    hidden = torch.randn(1, channels, frames, height // stride_h, width // stride_w, device=device)
    hidden = hidden.to(expert.dtype)
    context = pipe.encode_text([work.prompt]).to(expert.dtype)
    timestep = torch.full((1,), 900.0, device=device)
    full, skipped, computed = [], [], []
    with torch.no_grad():
        for _ in range(repeats):
            expert._reset_stateful_cache()
            with expert.cache_context("skip_probe"):
                for times in (full, skipped):
                    before = pipe.compute_counter.snapshot()[HIGH]
                    start = now(device)
                    expert(hidden_states=hidden, timestep=timestep, encoder_hidden_states=context, return_dict=False)
                    times.append(now(device) - start)
                    computed.append(pipe.compute_counter.snapshot()[HIGH] - before)
    full_s, skipped_s = statistics.median(full), statistics.median(skipped)
    return {
        "full_forward_s": full_s,
        "skipped_forward_s": skipped_s,
        "skipped_over_full": skipped_s / full_s,
        "all_full_s": full,
        "all_skipped_s": skipped,
        "computed_per_call": computed,  # 1, 0, 1, 0, ...: full then skipped
    }
