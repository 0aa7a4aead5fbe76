"""PROVISIONAL (replaced by the engine's own module at merge): the resolved options an engine is built from.

Only what the benchmarks use; written against the agreed API.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wan.config import TaskConfig
from wan.levers import Levers
from wan.lora import LoraFile


@dataclass(frozen=True)
class EngineOptions:
    """Everything that decides how the pipeline is built; resolved once."""

    config: TaskConfig
    ckpt_dir: Path | None  # None: the parts are handed to ``build_engine`` (random weights in the benchmarks)
    device: str
    placement: str
    convert_model_dtype: bool
    t5_cpu: bool
    preset: str | None
    levers: Levers
    preset_notes: tuple[str, ...] = ()
    loras: tuple[LoraFile, ...] = ()
