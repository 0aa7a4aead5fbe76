"""Our configurations to time against the peer: placement, levers (explicit or a preset's), VAE tiling.

A mode is data; the product's own resolution turns it into levers (``wan.levers.presets``) and the
engine builds it. ``--modes`` takes names from ``MODES``, each optionally with more levers after
``~`` (``preset_exact~attention_backend=native``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from wan.errors import ConfigError
from wan.levers import Levers, parse_levers
from wan.levers.attention import FLASH_4, SAGE
from wan.levers.presets import resolve_levers

PEER = "peer"
CACHE_SPEC = "fbc:0.05"  # the cache mode's fixed threshold (the skip decision is meaningless on random weights)
CUDA_ONLY_BACKENDS = ("_native_cudnn", "flash", "_native_flash", "_native_efficient", FLASH_4, SAGE)
BUDGET_ALLOWANCE_S = {"fp8": 200.0, "compile": 90.0, "stream": 60.0, "offload": 30.0}
"""Rough extra seconds a mode's setup may take, for the budget check only (fp8+compile ~193 s first call;
block-streaming setup 17-28 s per expert); guesses, never reported as results."""


@dataclass(frozen=True)
class Mode:
    """One of our configurations: placement choice, levers (explicit or a preset's) and VAE tiling."""

    placement: str = "auto"
    levers: dict[str, Any] = field(default_factory=dict)  # explicit lever flags (wan.levers.Levers fields)
    preset: str | None = None
    vae_tiling: bool = False


MODES: dict[str, Mode | None] = {  # in the order they run: the most important first; None is the peer
    PEER: None,
    "default": Mode(),
    "preset_exact": Mode(preset="exact"),
    "preset_fast": Mode(preset="fast"),
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


def mode_of(name: str) -> Mode | None:
    """A mode by name: one of ``MODES``, optionally with levers after ``~`` (``preset_exact~attention_backend=X``)."""
    base, _, lever_text = name.partition("~")
    mode = MODES[base]
    if not lever_text:
        return mode
    if mode is None:
        raise ConfigError("the peer takes no levers")
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


def unavailable(mode: Mode, device: torch.device) -> str | None:
    """Why ``mode`` cannot run on this device (recorded as the skip reason), or None."""
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
    if backend and backend not in (FLASH_4, SAGE):  # checked with the levers: installed kernels, no Hub
        from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

        try:  # the check diffusers runs when a model is set to the backend
            _check_attention_backend_requirements(AttentionBackendName(backend))
        except (RuntimeError, ImportError, ValueError) as exc:
            return str(exc).splitlines()[0]
    return None


def budget_estimate(mode: Mode | None, peer: dict[str, Any] | None, device: torch.device) -> float:
    """Seconds a mode should take (warm-up + timed run, like the peer's), plus its setup allowance."""
    if peer is None or mode is None:
        return 0.0
    base = peer["measured"]["seconds"] + peer["setup_seconds"]["warmup_s"]
    levers = dict(mode.levers)
    if mode.preset:
        levers.update({k: v for k, v in levers_of(mode, device)[0].as_dict().items() if v})
    keys = [k for k in ("fp8", "compile") if levers.get(k)] + [mode.placement]
    return base + sum(BUDGET_ALLOWANCE_S.get(k, 0.0) for k in keys)
