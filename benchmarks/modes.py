"""Our configurations to time against the peers: placement, levers (explicit or a preset's), VAE tiling, LoRAs.

A mode is data; the product's own resolution turns it into levers (``wan.levers.presets``) and the
engine builds it. ``--modes`` takes names from ``MODES``, each optionally with more levers after
``~`` (``preset_exact~attention_backend=native``). ``PeerMode`` entries are diffusers' pipelines: the
task's own (``peer``, every ratio's reference) and the few-step one with the distill LoRA pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from wan.errors import ConfigError
from wan.levers import Levers, parse_levers
from wan.levers.attention import FLASH_3, FLASH_4, SAGE
from wan.levers.presets import PRESETS, resolve_levers

PEER = "peer"
FEW_STEP_PEER = "peer_fewstep"
CACHE_SPEC = "fbc:0.05"  # the cache mode's fixed threshold (the skip decision is meaningless on random weights)
CUDA_ONLY_BACKENDS = ("_native_cudnn", "flash", "_native_flash", "_native_efficient", FLASH_4, FLASH_3, SAGE)
BUDGET_ALLOWANCE_S = {"fp8": 200.0, "compile": 60.0, "stream": 60.0, "offload": 30.0}
"""Rough extra seconds a mode's setup may take, for the budget check only (fp8+compile ~193 s first call;
compiling otherwise 8-44 s of a warm-up at full size, 62 s with max-autotune GEMMs; block-streaming setup
17-28 s per expert); guesses, never reported as results."""


@dataclass(frozen=True)
class Mode:
    """One of our configurations: placement choice, levers (explicit or a preset's) and VAE tiling."""

    placement: str = "auto"
    levers: dict[str, Any] = field(default_factory=dict)  # explicit lever flags (wan.levers.Levers fields)
    preset: str | None = None
    vae_tiling: bool = False
    lora_pair: bool = False  # the run's random distill LoRA pair, one file per expert (``--lora_dir``)


@dataclass(frozen=True)
class PeerMode:
    """diffusers' pipeline for the task; ``few_step``: with the distill LoRA pair at the distill schedule."""

    few_step: bool = False


EXACT_LEVERS = {name: value for name, value in PRESETS["exact"].levers.as_dict().items() if value}
"""The exact preset's levers, to put on top of another preset's schedule (``preset_lightning_exact``, which adds
the VAE's kernels: they too compile once per process)."""

MODES: dict[str, Mode | PeerMode] = {  # in the order they run: the most important first
    PEER: PeerMode(),
    "default": Mode(),
    "preset_exact": Mode(preset="exact"),
    "preset_fast": Mode(preset="fast"),
    FEW_STEP_PEER: PeerMode(few_step=True),
    "preset_lightning": Mode(preset="lightning", lora_pair=True),
    "preset_lightning_exact": Mode(preset="lightning", levers={**EXACT_LEVERS, "vae_kernels": True}, lora_pair=True),
    "preset_fast@taylorseer:2": Mode(preset="fast", levers={"cache": "taylorseer:2"}),
    "offload": Mode(placement="offload"),
    "stream": Mode(placement="stream"),
    "resident_lean": Mode(placement="resident_lean"),
    "vae_tiling": Mode(vae_tiling=True),
    "compile": Mode(levers={"compile": True}),
    "fp8": Mode(levers={"fp8": "all"}),
    "fp8+compile": Mode(levers={"fp8": "all", "compile": True}),
    "cache": Mode(levers={"cache": CACHE_SPEC}),
    "vae_bf16": Mode(levers={"vae_dtype": "bfloat16"}),
    **{f"attention:{b}": Mode(levers={"attention_backend": b}) for b in ("native", *CUDA_ONLY_BACKENDS)},
}


def mode_of(name: str) -> Mode | PeerMode:
    """A mode by name: one of ``MODES``, optionally with levers after ``~`` (``preset_exact~attention_backend=X``)."""
    base, _, lever_text = name.partition("~")
    mode = MODES[base]
    if not lever_text:
        return mode
    if isinstance(mode, PeerMode):
        raise ConfigError("a peer takes no levers")
    return replace(mode, levers={**mode.levers, **parse_levers(lever_text)})


def selected_modes(text: str) -> list[str]:
    """--modes in run order (``MODES``' order, each base's variants after it), the peer always first."""
    asked = [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted({m for m in asked if m.partition("~")[0] not in MODES})
    if unknown:
        raise SystemExit(f"error: unknown --modes {', '.join(unknown)}; choose from {', '.join(MODES)}")
    try:
        for name in asked:
            mode_of(name)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from exc
    order = list(MODES)
    ranked = sorted(dict.fromkeys(asked), key=lambda m: order.index(m.partition("~")[0]))
    return [PEER, *(m for m in ranked if m != PEER)]


def levers_of(mode: Mode, device: torch.device) -> tuple[Levers, list[str]]:
    """The product's resolution: a preset's levers (minus what this hardware lacks) or the explicit ones."""
    return resolve_levers(mode.preset, dict(mode.levers), device)


def unavailable(mode: Mode | PeerMode, device: torch.device, experts: int = 2) -> str | None:
    """Why ``mode`` cannot run on this device and model of ``experts`` experts (the skip reason), or None."""
    few_step = mode.few_step if isinstance(mode, PeerMode) else mode.lora_pair
    if few_step and experts != 2:
        return "the distill LoRA pairs (one file per expert) are for the two-expert A14B models"
    if isinstance(mode, PeerMode):
        return None
    backend = mode.levers.get("attention_backend")
    if device.type != "cuda":
        if backend in CUDA_ONLY_BACKENDS:
            return f"the {backend} attention backend needs CUDA"
        if mode.levers.get("compile"):
            return "torch.compile modes run on CUDA only here (inductor's CPU build of the toy model is slow)"
        if mode.placement == "stream":
            return "block streaming needs CUDA (wan.placement.BlockStream)"
    try:
        levers_of(mode, device)
    except ConfigError as exc:
        return str(exc)
    if backend and backend not in (FLASH_4, FLASH_3, SAGE):  # checked with the levers: installed kernels, no Hub
        from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

        try:  # the check diffusers runs when a model is set to the backend
            _check_attention_backend_requirements(AttentionBackendName(backend))
        except (RuntimeError, ImportError, ValueError) as exc:
            return str(exc).splitlines()[0]
    return None


class OverBudget(Exception):
    """A mode's timed run, estimated from its warm-up, does not fit the time budget; the message says by how much."""


def timed_estimate(warmup_s: float, compile_s: float, fixed_s: float, warmup_steps: int, steps: int) -> float:
    """Seconds of a mode's timed run from its own warm-up: its once-per-video stages (``fixed_s``: text and image
    encoding, decode) once, and its sampling less the compiling, per step, times the steps."""
    sampling = max(0.0, warmup_s - compile_s - fixed_s)
    return fixed_s + sampling * steps / max(1, warmup_steps)


def budget_estimate(
    mode: Mode | PeerMode, peer: dict[str, Any] | None, device: torch.device, forwards: int | None = None
) -> float:
    """Seconds a mode should take (warm-up + timed run, like the peer's scaled to the mode's ``forwards``
    where given), plus its setup allowance. Levers only speed a mode up, so for one of ours this errs long;
    the run checks ours again after its warm-up (``timed_estimate``)."""
    if peer is None or mode == MODES[PEER]:
        return 0.0
    base = peer["measured"]["seconds"] + peer["setup_seconds"]["warmup_s"]
    peer_forwards = sum(peer["measured"]["forwards"].values())
    if forwards is not None and peer_forwards:
        base *= min(1.0, 1.5 * max(forwards, 1) / peer_forwards)  # text and decode do not shrink with the steps
    if isinstance(mode, PeerMode):
        return base
    levers = dict(mode.levers)
    if mode.preset:
        levers.update({k: v for k, v in levers_of(mode, device)[0].as_dict().items() if v})
    keys = [k for k in ("fp8", "compile") if levers.get(k)] + [mode.placement]
    return base + sum(BUDGET_ALLOWANCE_S.get(k, 0.0) for k in keys)
