"""PROVISIONAL (replaced by the engine's own module at merge): options -> loaded, placed, LoRA'd, levered pipeline.

Written against the agreed API with today's ``generate.load_pipeline`` steps, plus what the benchmarks
need: ``components`` hands in parts already in memory (random weights at full size) instead of a
checkpoint folder, and ``load_timings`` times placement and levers apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from wan.checkpoints import WanComponents
from wan.guidance import StepPlan
from wan.levers import apply_levers
from wan.lora import apply_loras
from wan.options import EngineOptions
from wan.placement import Placement, apply_placement, choose_placement
from wan.settings import GenerationSettings
from wan.text2video import GenerationResult, WanT2V


@dataclass
class Engine:
    """A ready pipeline and how it was built."""

    options: EngineOptions
    pipe: WanT2V
    load_timings: dict[str, float] = field(default_factory=dict)

    def generate(
        self,
        settings: GenerationSettings,
        *,
        progress: bool = True,
        on_step: Callable[[StepPlan, torch.Tensor], None] | None = None,
    ) -> GenerationResult:
        return self.pipe.generate(settings, progress=progress, on_step=on_step)


def _largest_run(options: EngineOptions, runs: Sequence[GenerationSettings]) -> dict[str, int]:
    from generate import largest_run

    return largest_run(options.config, list(runs))


def build_engine(
    options: EngineOptions, runs: Sequence[GenerationSettings] = (), *, components: WanComponents | None = None
) -> Engine:
    """Load (or take ``components``) -> placement sized for the largest of ``runs`` -> LoRA fuse -> levers."""
    device = torch.device(options.device)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if components is None:
        pipe = WanT2V.from_pretrained(
            options.config,
            options.ckpt_dir,
            device=device,
            convert_model_dtype=options.convert_model_dtype,
            placement=Placement(reason="loaded on the CPU"),
            t5_cpu=options.t5_cpu,
        )
    else:
        pipe = WanT2V(
            options.config, components, device=device, placement=Placement(reason="given parts"), t5_cpu=options.t5_cpu
        )
    timings["load"] = time.perf_counter() - start
    start = time.perf_counter()
    apply_placement(pipe, choose_placement(pipe, options.placement, **_largest_run(options, runs)))
    _sync(device)
    timings["placement"] = time.perf_counter() - start
    if options.loras:
        start = time.perf_counter()
        apply_loras(pipe, options.loras)
        timings["lora_fuse"] = time.perf_counter() - start
    start = time.perf_counter()
    apply_levers(pipe, options.levers)
    _sync(device)
    timings["levers"] = time.perf_counter() - start
    return Engine(options, pipe, timings)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
