"""Provisional: engine options resolved once from the command line's flags (replaced by the lead's module)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wan.config import TaskConfig, load_task_config

if TYPE_CHECKING:
    from wan.levers import Levers
    from wan.lora import LoraFile


@dataclass(frozen=True)
class EngineOptions:
    """Everything that decides how the pipeline is built."""

    config: TaskConfig
    ckpt_dir: Path
    device: str
    placement: str
    convert_model_dtype: bool
    t5_cpu: bool
    preset: str | None
    levers: Levers
    preset_notes: tuple[str, ...] = ()
    loras: tuple[LoraFile, ...] = ()
    flags: tuple[tuple[str, Any], ...] = ()  # provisional: what generate.py's helpers read


def resolve_options(flags: Mapping[str, Any]) -> EngineOptions:
    """The options of ``flags`` (generate.py's argparse dests); raises ``ConfigError``."""
    import generate
    from wan.lora import check_loras, lora_specs

    args = argparse.Namespace(**flags)
    config = load_task_config(args.task)
    ckpt_dir = generate.resolve_ckpt_dir(args, config)
    loras = check_loras(lora_specs(dict(flags)))
    generate.resolve_device(args)
    return EngineOptions(
        config=config,
        ckpt_dir=ckpt_dir,
        device=args.device,
        placement=args.placement,
        convert_model_dtype=args.convert_model_dtype,
        t5_cpu=args.t5_cpu,
        preset=args.preset,
        levers=args.levers,
        preset_notes=tuple(args.preset_notes),
        loras=tuple(loras),
        flags=tuple(vars(args).items()),
    )
