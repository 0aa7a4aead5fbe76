"""Presets: named sets of lever and generation defaults, resolved against the flags and the hardware.

A preset only fills in what the user left unset: an explicit flag always wins. A lever the hardware
lacks (float8 on a CPU or a pre-Ada GPU, a GEMM GELU epilogue that is not Wan's tanh form) is left
out of a preset with a log line, while the same lever asked for explicitly is an error
(``HARDWARE_CHECKS``).

- ``exact``: the fastest combination that keeps the video to bf16 tolerance (same math, other kernels):
  compile, fused q/k/v projections, the q/k norm + RoPE in one kernel and the feed-forward GELU in its
  GEMM's epilogue, on top of the default attention (FlashAttention 4 where it runs,
  ``wan.levers.attention``).
- ``fast``: the fastest combination whose quality holds on t2v-tiny (>= 30 dB mean PSNR against the
  baseline over 32 held-out prompts, adherence within 2 points; docs/QUALITY.md has the table):
  exact's compile and fused projections (its two fused kernels join once the bound is measured with
  them: bf16-level changes, but the bound's margin is 0.4 dB), SeaCache step caching (threshold 0.5,
  at most 3 cached forwards in a row for the high-noise expert and 5 for the low-noise one, whose late
  steps change little: ~21 of 72 forwards computed, where the video changes) and CFG truncation 5/3,
  with SageAttention 2 where it is installed (30.4 dB with it, 30.7 without; 1.04x per A14B forward)
  and the default attention elsewhere, and a bfloat16 VAE decode (56 dB from float32's on t2v-tiny;
  1 s less at 480p, ``wan.levers.vae_precision``).
  Float8 is left out: every block linear costs t2v-tiny ~32 dB alone, and the feed-forward layers
  alone take the fast preset to 29.97 dB, under its bound (docs/QUALITY.md).

Without ``--attention_backend`` every run, preset or not, takes the fastest kernel that keeps the video
and runs here (``default_attention_backend``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from wan.errors import ConfigError
from wan.levers import Levers, check_lever_values, check_levers
from wan.levers.attention import default_attention_backend, local_kernel_problem
from wan.levers.fp8 import fp8_available
from wan.levers.gelu_epilogue import gelu_epilogue_problem

logger = logging.getLogger(__name__)


HARDWARE_CHECKS = {"fp8": fp8_available, "fuse_gelu": gelu_epilogue_problem}
"""Levers some hardware lacks, each with its check (device -> None, or why not): refused when asked
for, left out of a preset with a note."""


@dataclass(frozen=True)
class Preset:
    levers: Levers
    generation: dict[str, Any] = field(default_factory=dict)  # generation flags by CLI name
    load: dict[str, Any] = field(default_factory=lambda: {"convert_model_dtype": True})  # bf16 experts
    gpu_only: tuple[str, ...] = ("compile", "fuse_norm_rope", "fuse_gelu")  # levers that only pay off on a GPU
    attention: tuple[str, ...] = ()  # installed kernels it takes over the default, the first that runs here


PRESETS: dict[str, Preset] = {
    "exact": Preset(Levers(compile=True, fuse_projections=True, fuse_norm_rope=True, fuse_gelu=True)),
    "fast": Preset(
        Levers(compile=True, fuse_projections=True, cache="sea:0.5:3+5", vae_dtype="bfloat16"),
        generation={"cfg_truncate_steps": 5, "cfg_truncate_high_noise_steps": 3},
        attention=("sage",),
    ),
}


def resolve_levers(
    preset: str | None, explicit: dict[str, Any], device: torch.device, parallel: bool = False
) -> tuple[Levers, list[str]]:
    """The levers of a run: ``explicit`` (lever name -> value, None where unset) over the preset's.

    ``parallel``: the run splits each forward over GPUs (Ulysses, CFG parallel), which some kernels lack.
    Returns the levers and one note per lever the preset wanted but this run lacks. An unset attention
    backend becomes the default one for this run (``wan.levers.attention.default_attention_backend``).
    """
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown --preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    chosen, notes = _preset_levers(preset, explicit, device, parallel) if preset else (Levers(), [])
    unknown = set(explicit) - {f.name for f in fields(Levers)}
    if unknown:
        raise ValueError(f"not levers: {sorted(unknown)}")
    check_lever_values(explicit)  # a bad spec or scope fails here, before anything loads
    for name, check in HARDWARE_CHECKS.items():
        if explicit.get(name) and (why := check(device)):
            raise ConfigError(f"--{name}: {why}; run without --{name}")
    if why := local_kernel_problem(explicit.get("attention_backend"), device, parallel):
        raise ConfigError(f"--attention_backend {explicit['attention_backend']}: {why}; run without it")
    chosen = replace(chosen, **{k: v for k, v in explicit.items() if v is not None})
    if chosen.attention_backend is None:
        chosen = replace(chosen, attention_backend=default_attention_backend(device, parallel))
    check_levers(chosen)
    for note in notes:
        logger.info(note)
    return chosen, notes


def _preset_levers(
    preset: str, explicit: dict[str, Any], device: torch.device, parallel: bool
) -> tuple[Levers, list[str]]:
    """The preset's levers less what this run lacks (one note each), and its preferred attention where it runs."""
    chosen, notes = PRESETS[preset].levers, []
    for name, check in HARDWARE_CHECKS.items():
        if getattr(chosen, name) and explicit.get(name) is None and (why := check(device)):
            chosen = replace(chosen, **{name: getattr(Levers(), name)})
            notes.append(f"preset {preset}: {name} left out ({why})")
    for name in PRESETS[preset].gpu_only:
        if getattr(chosen, name) and explicit.get(name) is None and device.type != "cuda":
            chosen = replace(chosen, **{name: False})
            notes.append(f"preset {preset}: {name} left out on {device.type} (it pays off on a GPU only)")
    if explicit.get("attention_backend") is None:
        for backend in PRESETS[preset].attention:
            if why := local_kernel_problem(backend, device, parallel):
                notes.append(f"preset {preset}: attention {backend} left out ({why})")
            else:
                return replace(chosen, attention_backend=backend), notes
    return chosen, notes


def preset_generation_defaults(preset: str | None) -> dict[str, Any]:
    """Generation flags the preset sets where the user gave none (e.g. CFG truncation for ``fast``)."""
    return dict(PRESETS[preset].generation) if preset else {}


def preset_load_defaults(preset: str | None) -> dict[str, Any]:
    """Loading flags the preset sets where the user gave none (bf16 experts: float8 and the kernels want them)."""
    return dict(PRESETS[preset].load) if preset else {}
