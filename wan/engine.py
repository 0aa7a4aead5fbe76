"""Provisional: the engine built through generate.py's loader (replaced by the lead's module)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from wan.options import EngineOptions

if TYPE_CHECKING:
    from wan.settings import GenerationSettings
    from wan.text2video import GenerationResult, WanT2V


class Engine:
    """A loaded, placed, LoRA'd and levered pipeline, with the options it was built from."""

    def __init__(self, options: EngineOptions, pipe: WanT2V, load_timings: dict[str, float]):
        self.options = options
        self.pipe = pipe
        self.load_timings = load_timings

    def generate(self, settings: GenerationSettings, *, progress: bool = True) -> GenerationResult:
        return self.pipe.generate(settings, progress=progress)

    def sidecar_context(self) -> dict[str, Any]:
        import generate

        args = argparse.Namespace(**dict(self.options.flags))
        return generate.sidecar_context(args, self.options.config, self.options.ckpt_dir, list(self.options.loras))


def build_engine(options: EngineOptions, runs: Sequence[GenerationSettings] = ()) -> Engine:
    """Load -> placement (sized for the largest of ``runs``) -> LoRA fuse -> levers."""
    import generate

    args = argparse.Namespace(**dict(options.flags))
    pipe, timings = generate.load_pipeline(args, options.config, options.ckpt_dir, list(runs), list(options.loras))
    return Engine(options, pipe, timings)
