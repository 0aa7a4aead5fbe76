"""Speed levers: each a small class that wraps the loaded pipeline from outside the denoising loop.

The levers and the order they are installed in live in one list, ``wan.levers.registry.REGISTRY``;
``Levers`` (which are on, recorded in the sidecar), the command-line flags, the benchmarks' mode names
and every check derive from it (``wan.levers.lever``). Presets (``wan.levers.presets``) fill in what the
flags leave unset. The loop in ``wan.text2video`` never asks which lever is on. Placement
(``wan.placement``) is chosen separately, since it depends on memory rather than on speed/quality
trade-offs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wan.levers.presets import add_lever_flags, resolve_levers
from wan.levers.registry import REGISTRY, Levers

__all__ = [
    "REGISTRY",
    "Levers",
    "add_lever_flags",
    "apply_levers",
    "explicit_levers",
    "parse_levers",
    "resolve_levers",
]


def apply_levers(pipe: Any, levers: Levers) -> None:
    """Install ``levers`` on a loaded, placed pipeline (once; quantisation and compilation are not undone)."""
    REGISTRY.apply(pipe, levers)


def parse_levers(text: str) -> dict[str, Any]:
    """``fp8/compile/cache=fbc:0.05`` -> {"fp8": "all", "compile": True, "cache": "fbc:0.05"} (benchmark mode names)."""
    return REGISTRY.parse_mode(text)


def explicit_levers(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The lever flags of a command line (argparse dest names -> values, ``vars(args)``) as lever name -> value,
    None where unset: ``resolve_levers``' ``explicit``."""
    return REGISTRY.explicit(flags)
