"""Provisional: the loaded pipeline behind one interface (the lead's module replaces this)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import torch

from wan.guidance import StepPlan
from wan.options import EngineOptions
from wan.settings import GenerationSettings
from wan.text2video import GenerationResult, WanT2V


class Engine:
    """A pipeline loaded, placed, LoRA'd and levered once; generates any number of videos."""

    def __init__(self, options: EngineOptions, pipe: WanT2V, load_timings: dict[str, float]):
        self.options = options
        self.pipe = pipe
        self.load_timings = load_timings

    def generate(
        self,
        settings: GenerationSettings,
        *,
        progress: bool = True,
        on_step: Callable[[StepPlan, torch.Tensor], None] | None = None,
    ) -> GenerationResult:
        return self.pipe.generate(settings, progress=progress, on_step=on_step)

    def sidecar_context(self) -> dict[str, Any]:
        import generate

        return generate.sidecar_context(
            _namespace(self.options), self.options.config, self.options.ckpt_dir, list(self.options.loras)
        )


def _namespace(options: EngineOptions) -> argparse.Namespace:
    return argparse.Namespace(
        device=options.device,
        placement=options.placement,
        convert_model_dtype=options.convert_model_dtype,
        t5_cpu=options.t5_cpu,
        preset=options.preset,
        levers=options.levers,
        preset_notes=list(options.preset_notes),
    )


def build_engine(options: EngineOptions, runs: Sequence[GenerationSettings] = ()) -> Engine:
    """Load -> placement (sized for the largest of ``runs``) -> LoRA fuse -> levers."""
    import generate

    pipe, timings = generate.load_pipeline(
        _namespace(options), options.config, options.ckpt_dir, list(runs), list(options.loras)
    )
    return Engine(options, pipe, timings)
