"""Provisional: the engine options resolved once from generate.py's flags (the lead's module replaces this)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wan.config import TaskConfig, load_task_config
from wan.levers import Levers
from wan.lora import LoraFile, check_loras, lora_specs
from wan.validation import check_flags


@dataclass(frozen=True)
class EngineOptions:
    """Everything that decides how the pipeline is built; resolved once."""

    config: TaskConfig
    ckpt_dir: Path
    device: str
    placement: str
    convert_model_dtype: bool
    t5_cpu: bool
    preset: str | None
    levers: Levers
    preset_notes: tuple[str, ...]
    loras: tuple[LoraFile, ...]


def resolve_options(flags: Mapping[str, Any]) -> EngineOptions:
    """flags: generate.py's argparse dest names -> values (vars(args)); raises ConfigError."""
    import generate

    args = argparse.Namespace(**flags)
    generate.apply_preset_defaults(args)
    config = load_task_config(args.task)
    check_flags(vars(args), config)
    ckpt_dir = generate.resolve_ckpt_dir(args, config)
    loras = check_loras(lora_specs(vars(args)))
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
    )
