"""Presets: named sets of lever and generation defaults, resolved against the flags and the hardware.

A preset only fills in what the user left unset: an explicit flag always wins. A lever the hardware
lacks (float8 on a CPU or a pre-Ada GPU, a GEMM GELU epilogue that is not Wan's tanh form) is left
out of a preset with a log line, while the same lever asked for explicitly is an error (each lever's
``problem``, ``wan.levers.registry``). A lever that pays off on a GPU only (``gpu_only``) is left out of a
preset elsewhere, but runs there when asked for.

- ``exact``: the fastest combination that keeps the video to bf16 tolerance (same math, other kernels):
  compile, fused q/k/v projections, the q/k norm + RoPE in one kernel and the feed-forward GELU in its
  GEMM's epilogue, on top of the default attention (FlashAttention 4, else 3, where it runs,
  ``wan.levers.attention``).
- ``fast``: the fastest combination whose quality holds on t2v-tiny (>= 30 dB mean PSNR against the
  baseline over 32 held-out prompts, adherence within 2 points; docs/QUALITY.md has the table):
  exact's compile and fused projections (its two fused kernels join once the bound is measured with
  them: bf16-level changes, but the bound's margin is 0.4 dB), SeaCache step caching (threshold 0.5,
  at most 3 cached forwards in a row for the high-noise expert and 5 for the low-noise one, whose late
  steps change little: ~21 of 72 forwards computed, where the video changes) and CFG truncation 5/3,
  with SageAttention 2 where it is installed (30.4 dB with it, 30.7 without; 1.04x per A14B forward)
  and the default attention elsewhere, and a bfloat16 VAE decode (56 dB from float32's on t2v-tiny;
  1 s less at 480p, ``wan.levers.vae_precision``) with channels-last convolutions and compiled norms
  (another third off the encode and decode, ``wan.levers.vae_compile``).
- ``lightning``: the distill LoRA pairs' 4-step schedule with fast's bfloat16 VAE: at 4 steps the
  encode and decode are a quarter of the run. Nothing that compiles: a single 13-s video would wait
  longer for the compiler than the compiled code saves; many videos per process gain from adding
  exact's levers and ``--vae_kernels`` (that is the benchmark's ``preset_lightning_exact``).
  Float8 is left out: every block linear costs t2v-tiny ~32 dB alone, and the feed-forward layers
  alone take the fast preset to 29.97 dB, under its bound (docs/QUALITY.md).

Without ``--attention_backend`` every run, preset or not, takes the fastest kernel that keeps the video
and runs here (``default_attention_backend``).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wan.errors import ConfigError
from wan.levers.lever import Lever, Registry
from wan.levers.registry import REGISTRY, Levers

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preset:
    """What ``--preset NAME`` fills in where the user left a flag unset.

    A lever's candidates are its ``prefer`` values, in order, then its value in ``levers``: the preset takes
    the first that runs here (an installed kernel where it works, else the default).

    ``generation`` and ``load`` hold generate.py's flags by dest name: generation defaults such as
    ``sample_steps``, ``sample_shift``, ``sample_guide_scale``, ``sample_solver`` or CFG truncation (a
    preset for a distilled model's schedule is data here), and loading defaults (bf16 experts).
    """

    summary: str  # its line in --preset's help
    levers: Levers = field(default_factory=Levers)  # its levers; one this run lacks is left out with a note
    prefer: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)  # lever -> values to try before ``levers``'
    generation: Mapping[str, Any] = field(default_factory=dict)
    load: Mapping[str, Any] = field(default_factory=lambda: {"convert_model_dtype": True})  # float8 and kernels want it


PRESETS: dict[str, Preset] = {
    "exact": Preset(
        "the fastest levers that keep the video (compile, fused projections, fused q/k norm + RoPE, GELU epilogue)",
        Levers(compile=True, fuse_projections=True, fuse_norm_rope=True, fuse_gelu=True),
    ),
    "fast": Preset(
        "the fastest whose quality holds on t2v-tiny (compile, fused projections, SeaCache step cache, CFG truncation "
        "5/3, bfloat16 VAE with its fast kernels)",
        Levers(compile=True, fuse_projections=True, cache="sea:0.5:3+5", vae_dtype="bfloat16", vae_kernels=True),
        prefer={"attention_backend": ("sage",)},  # where it is installed and runs; the default attention elsewhere
        generation={"cfg_truncate_steps": 5, "cfg_truncate_high_noise_steps": 3},
    ),
    "lightning": Preset(
        "the 4-step schedule the distill LoRA pairs (Wan2.2-Lightning, LightX2V) were trained on: Euler on "
        "timesteps 1000/937.5/833/625, two per expert, no CFG, and a bfloat16 VAE; give the pair with --lora_dir",
        Levers(vae_dtype="bfloat16"),  # at 4 steps the VAE is a quarter of the run
        generation={"sample_solver": "euler_distill", "sample_steps": 4, "sample_shift": 5.0, "sample_guide_scale": 1},
    ),
}


def add_lever_flags(group: argparse._ActionsContainer, registry: Registry = REGISTRY) -> None:
    """``--preset`` and every lever's flag, all unset (None) by default so a preset can fill them."""
    group.add_argument(
        "--preset",
        default=None,
        choices=list(PRESETS),
        help="; ".join(f"{name}: {preset.summary}" for name, preset in PRESETS.items()),
    )
    registry.add_flags(group)


def resolve_levers(
    preset: str | None,
    explicit: Mapping[str, Any],
    device: torch.device,
    parallel: bool = False,
    *,
    registry: Registry = REGISTRY,
    presets: Mapping[str, Preset] = PRESETS,
) -> tuple[Levers, list[str]]:
    """The levers of a run: ``explicit`` (lever name -> value, None where unset) over the preset's.

    ``parallel``: the run splits each forward over GPUs (Ulysses, CFG parallel), which some kernels lack.
    Returns the levers and one note per lever the preset wanted but this run lacks. An unset lever takes
    its default for this machine (the attention backend: ``wan.levers.attention.default_attention_backend``).
    """
    if preset is not None and preset not in presets:
        raise ConfigError(f"unknown --preset {preset!r}; choose one of: {', '.join(presets)}")
    unknown = set(explicit) - set(registry.names)
    if unknown:
        raise ValueError(f"not levers: {sorted(unknown)}")
    explicit = registry.check_values(explicit)  # a bad spec or scope fails here, before anything loads
    for lever in registry.chosen(explicit):
        if why := lever.problem(device, parallel):
            raise ConfigError(lever.refusal(why))
    values, notes = _preset_values(preset, presets.get(preset), explicit, device, parallel, registry)
    values.update({name: value for name, value in explicit.items() if value is not None})
    for lever in registry:
        if values.get(lever.name) is None and (here := lever.machine_default(device, parallel)) is not None:
            values[lever.name] = here
    levers = registry.settings(**values)
    registry.check_combination(levers)
    for note in notes:
        logger.info(note)
    return levers, notes


def _preset_values(
    name: str | None,
    preset: Preset | None,
    explicit: Mapping[str, Any],
    device: torch.device,
    parallel: bool,
    registry: Registry,
) -> tuple[dict[str, Any], list[str]]:
    """The preset's lever values this run can take, for the levers the user left unset, and one note per value
    left out. A lever's candidates are its ``prefer`` values, then its value in ``levers``: the first that runs."""
    values: dict[str, Any] = {}
    notes: list[str] = []
    if preset is None:
        return values, notes
    for lever in registry:
        if explicit.get(lever.name) is not None:
            continue  # the flag wins
        for candidate in (*preset.prefer.get(lever.name, ()), getattr(preset.levers, lever.name, lever.default)):
            if not candidate:
                break  # unset or off: nothing to check
            if why := _lacks(lever(candidate), device, parallel):
                notes.append(f"preset {name}: {lever(candidate).label} left out {why}")
                continue
            values[lever.name] = candidate
            break
    return values, notes


def _lacks(lever: Lever, device: torch.device, parallel: bool) -> str | None:
    """Why a preset leaves ``lever`` out of this run (the note's tail), or None."""
    if why := lever.problem(device, parallel):
        return f"({why})"
    return f"on {device.type} (it pays off on a GPU only)" if lever.gpu_only and device.type != "cuda" else None


def preset_generation_defaults(preset: str | None) -> dict[str, Any]:
    """Generation flags the preset sets where the user gave none (e.g. CFG truncation for ``fast``)."""
    return dict(PRESETS[preset].generation) if preset else {}


def preset_load_defaults(preset: str | None) -> dict[str, Any]:
    """Loading flags the preset sets where the user gave none (bf16 experts: float8 and the kernels want them)."""
    return dict(PRESETS[preset].load) if preset else {}
