"""Step-caching lever: diffusers' cache hooks on each expert, with thresholds calibrated per checkpoint.

A spec names the method and, optionally, its knob:

- ``fbc[:THRESHOLD]``: First Block Cache. The first block always runs; when its residual changed
  by less than THRESHOLD (relative L1) since the last full forward, the other blocks are skipped
  and their cached residual is reused. Without a threshold, each expert takes its own calibrated
  one from ``cache_calibration.json`` in the checkpoint folder (``scripts/calibrate_cache.py``
  writes it), else ``DEFAULT_FBC_THRESHOLD``.
- ``taylorseer[:INTERVAL[:ORDER]]``: TaylorSeer, lite variant. After two full steps, every
  INTERVAL-th step runs in full; on the steps between, every block is skipped and the output
  projection is predicted by a Taylor expansion of ORDER (1, the default, or 2) in the step index.
  Only the [tokens, 64] output is kept per context: predicting each block's attention and FFN
  instead would hold ~80 GB per context at A14B.
- ``sea[:THRESHOLD[:RUN]]``: SeaCache (diffusers' hook; ``denoised_latents`` shows it an image-to-video
  expert's latent channels, which its built-in Wan support does not find). Before each
  forward it filters the input latent by the step's signal-to-noise ratio (a spectral indicator, no
  block run) and, while the indicator's accumulated relative change stays under THRESHOLD, replaces
  the block stack with the last residual extrapolated linearly (at most RUN forwards in a row; RUN may
  be ``HIGH+LOW`` too, ``sea:0.5:3+5``: the low-noise expert's late steps change little, so on
  t2v-tiny longer runs there cost little, docs/QUALITY.md).
  Adaptive: where the video changes fast it computes more. It reads the step's sigma and the step
  count from the cache context the loop sets. Unset, both come from the checkpoint's calibration
  (``scripts/calibrate_cache.py --method sea``), else 0.5 and 3+5: ``--preset fast``'s, which keep
  t2v-tiny's bound (docs/QUALITY.md).

The knob may be one value for both experts or ``HIGH+LOW``, the high-noise expert's then the
low-noise one's (``taylorseer:3+4:2``): on t2v-tiny the low-noise expert takes every 4th step at
0.1 dB while caching the high-noise expert harder costs dB fast (docs/QUALITY.md).

Each expert has its own hooks, so its own state; the loop names every call's context
(``cond``/``uncond`` and the frame count, ``wan.text2video.call_expert``), so cond and uncond, and
half- and full-frame calls, never share a cache entry, and the state is reset at every video's start.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from wan.config import HIGH, LOW
from wan.errors import ConfigError

logger = logging.getLogger(__name__)

METHODS = ("fbc", "taylorseer", "sea")
DEFAULT_FBC_THRESHOLD = 0.05
DEFAULT_TAYLORSEER_INTERVAL = 3
DEFAULTS = {"fbc": DEFAULT_FBC_THRESHOLD, "taylorseer": DEFAULT_TAYLORSEER_INTERVAL, "sea": 0.5}
DEFAULT_SEA_RUN = (3, 5)  # (high-noise, low-noise): the fast preset's
MAX_SEA_RUN = 8  # the longest run of cached forwards a spec or a calibration may ask for
CALIBRATION_FILE = "cache_calibration.json"
TAYLORSEER_ORDERS = ("1", "2")
PER_EXPERT_EXAMPLES = {"fbc": "0.05+0.08", "taylorseer": "3+4", "sea": "0.2+0.3"}
EXPERTS = (HIGH, LOW)  # the order of a ``HIGH+LOW`` knob


@dataclass(frozen=True)
class CacheSpec:
    method: str
    values: tuple[float, ...] = ()  # one knob for both experts, or (high-noise, low-noise); (): calibrated or default
    order: int = 1  # TaylorSeer's expansion order
    max_run: tuple[int, ...] = ()  # SeaCache's longest run of cached forwards, one or (high, low); (): calibrated

    def method_settings(self, calibration: dict) -> dict[str, int | str]:
        """The method's setting beside the knob: TaylorSeer's order, SeaCache's longest run (sidecar and log).

        SeaCache's run is one number when both experts share it, else ``HIGH+LOW`` as in the spec.
        """
        if self.method == "sea":
            return {"max_run": sea_run_record(tuple(self.run(calibration, expert) for expert in EXPERTS))}
        return {"order": self.order} if self.method == "taylorseer" else {}

    def run(self, calibration: dict, expert: str) -> int:
        """This expert's SeaCache run: the spec's, else the checkpoint's calibrated one, else the default."""
        calibrated = calibration.get("sea", {}).get("max_run")
        if self.max_run:
            runs = self.max_run
        elif calibrated is not None:
            runs = parse_sea_run(str(calibrated), f"{CALIBRATION_FILE}: max_run {calibrated!r}")
        else:
            runs = DEFAULT_SEA_RUN
        return for_expert(runs, expert)

    def value_for(self, expert: str) -> float | None:
        """This expert's knob from the spec itself (None: take the calibrated or default one)."""
        return for_expert(self.values, expert)


def for_expert(values: tuple, expert: str):
    """A spec field's value for ``expert``: one shared value, or (high-noise, low-noise); None if unset."""
    if len(values) == 2:
        return values[EXPERTS.index(expert)]
    return values[0] if values else None


def parse_cache_spec(text: str) -> CacheSpec:
    """``"fbc:0.05"`` -> CacheSpec("fbc", (0.05,)); ``"taylorseer:3+4:2"`` -> per-expert intervals, order 2.

    Errors are one line naming what is allowed.
    """
    method, _, value = text.strip().partition(":")
    if method not in METHODS:
        raise ConfigError(f"unknown --cache method {method!r}; choose one of: {', '.join(METHODS)} (e.g. fbc:0.05)")
    value, _, third = value.partition(":")
    if third:
        if method == "fbc" or not value:
            raise ConfigError(
                f"--cache {text}: only taylorseer (an order) and sea (a run) take a third field, after their "
                "knob (taylorseer:4:2, sea:0.5:3)"
            )
        spec = parse_cache_spec(f"{method}:{value}")
        if method == "sea":
            return replace(spec, max_run=parse_sea_run(third, f"--cache {text}"))
        if third not in TAYLORSEER_ORDERS:
            raise ConfigError(f"--cache {text}: the taylorseer order must be 1 or 2, e.g. taylorseer:4:2")
        return replace(spec, order=int(third))
    if not value:
        return CacheSpec(method)
    knobs = value.split("+")
    if len(knobs) > len(EXPERTS):
        example = f"{method}:{PER_EXPERT_EXAMPLES[method]}"
        raise ConfigError(f"--cache {text}: give one value, or two as HIGH+LOW (e.g. {example})")
    return CacheSpec(method, tuple(_knob(text, method, knob) for knob in knobs))


def _knob(text: str, method: str, value: str) -> float:
    """One expert's threshold or interval, checked."""
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"--cache {text}: {value!r} is not a number") from None
    if method == "fbc" and not 0 < number < 1:
        raise ConfigError(f"--cache {text}: the fbc threshold must be in (0, 1), e.g. fbc:0.05")
    if method == "sea" and not 0 < number < 100:
        raise ConfigError(f"--cache {text}: the sea threshold must be positive, e.g. sea:0.25")
    if method == "taylorseer" and (number != int(number) or number < 2):
        raise ConfigError(f"--cache {text}: the taylorseer interval must be a whole number >= 2, e.g. taylorseer:3")
    return number


def read_calibration(ckpt_dir: str | Path | None) -> dict:
    """The checkpoint's calibrated cache settings ({} if it has none)."""
    path = Path(ckpt_dir) / CALIBRATION_FILE if ckpt_dir else None
    if path is None or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not readable JSON ({exc}); re-run scripts/calibrate_cache.py") from exc


def expert_settings(spec: CacheSpec, expert: str, calibration: dict) -> float:
    """The knob for one expert: the spec's value, else the calibrated one, else the default."""
    if (value := spec.value_for(expert)) is not None:
        return value
    calibrated = calibration.get(spec.method, {}).get(expert)
    if calibrated is not None:
        return float(calibrated)
    return DEFAULTS[spec.method]


def cache_settings(spec_text: str, ckpt_dir: str | Path | None, experts: Iterable[str]) -> dict[str, str | float]:
    """What each expert uses for ``spec_text`` with this checkpoint's calibration: the sidecar's record too."""
    spec = parse_cache_spec(spec_text)
    calibration = read_calibration(ckpt_dir)
    knobs = {name: expert_settings(spec, name, calibration) for name in experts}
    return {"method": spec.method, **spec.method_settings(calibration), **knobs}


def parse_sea_run(text: str, where: str) -> tuple[int, ...]:
    """``"3"`` -> (3,), ``"3+5"`` -> (3, 5): SeaCache's longest run, one for both experts or HIGH+LOW."""
    runs = text.split("+")
    if len(runs) > len(EXPERTS) or not all(r.isdigit() and 1 <= int(r) <= MAX_SEA_RUN for r in runs):
        raise ConfigError(
            f"{where}: the sea run must be a whole number from 1 to {MAX_SEA_RUN}, or two as HIGH+LOW, "
            "e.g. sea:0.5:3 or sea:0.5:3+5"
        )
    return tuple(map(int, runs))


def sea_run_record(runs: tuple[int, ...]) -> int | str:
    """How the sidecar and the calibration file write a SeaCache run: one number if the experts share it."""
    return runs[0] if len(set(runs)) == 1 else "+".join(map(str, runs))


def denoised_latents(module: torch.nn.Module, args: tuple, kwargs: dict) -> list[torch.Tensor] | None:
    """What SeaCache watches from step to step: the latents being denoised, one ``(C, T, H, W)`` per sample.

    An I2V expert's input also carries the mask and the image latent (its channels past ``out_channels``),
    which SeaCache must not treat as part of the output; diffusers' own Wan adapter knows only experts whose
    input is their output (T2V, TI2V) and otherwise leaves SeaCache computing every forward.
    """
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    if not isinstance(hidden, torch.Tensor) or hidden.ndim != 5:
        return None
    channels = getattr(getattr(module, "config", None), "out_channels", hidden.shape[1])
    return list(hidden[:, :channels].unbind(dim=0))


def cache_config(method: str, value: float, order: int = 1, *, max_run: int):
    """The diffusers hook config for one expert."""
    from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig
    from diffusers.hooks.sea_cache import SeaCacheConfig

    if method == "fbc":
        return FirstBlockCacheConfig(threshold=value)
    if method == "sea":
        return SeaCacheConfig(threshold=value, max_consecutive_cached=max_run, raw_vision_callback=denoised_latents)
    return TaylorSeerCacheConfig(
        cache_interval=int(value),
        disable_cache_before_step=2,
        max_order=order,
        taylor_factors_dtype=torch.float32,
        use_lite_mode=True,
    )


def enable_cache(pipe, spec_text: str) -> None:
    """Install the cache hooks on both experts, each with its own knob (logged)."""
    spec = parse_cache_spec(spec_text)
    calibration = read_calibration(getattr(pipe, "ckpt_dir", None))
    chosen = {}
    for name, expert in pipe.experts.items():
        chosen[name] = expert_settings(spec, name, calibration)
        if spec.value_for(name) is None and name not in calibration.get(spec.method, {}):
            logger.warning(
                "no calibrated %s setting for the %s expert: using %s (scripts/calibrate_cache.py --method %s "
                "calibrates this checkpoint)",
                spec.method,
                name,
                chosen[name],
                spec.method,
            )
        expert.enable_cache(cache_config(spec.method, chosen[name], spec.order, max_run=spec.run(calibration, name)))
    pipe.compute_counter = ComputeCounter(pipe.experts)
    settings = "".join(f" ({k} {v})" for k, v in spec.method_settings(calibration).items())
    knobs = ", ".join(f"{k} {v:g}" for k, v in chosen.items())
    logger.info("cache %s%s: %s", spec.method, settings, knobs)


@contextmanager
def counting_computed(pipe) -> Iterator[dict[str, int]]:
    """Fills the yielded dict, on exit, with each expert's forwards whose blocks ran meanwhile ({} without a cache).

    For the sidecar: what an adaptive cache (First Block Cache, SeaCache) did on this video.
    """
    counter = getattr(pipe, "compute_counter", None)
    before = counter.snapshot() if counter else {}
    computed: dict[str, int] = {}
    yield computed
    if counter:
        computed.update({name: n - before[name] for name, n in counter.snapshot().items()})


class ComputeCounter:
    """Counts the forwards whose last block really computed, per expert, to report the skip fraction.

    A pre-hook on the last block's final FFN linear fires only when that layer runs: First Block
    Cache skips the whole block, TaylorSeer returns a prediction instead of calling it.
    """

    def __init__(self, experts: dict[str, torch.nn.Module]):
        self.computed = {name: 0 for name in experts}
        # Regional compile reuses block 0's code for every block and by default does not guard on hooks,
        # so the last block would run without this one: guard on them (the last block compiles apart).
        torch._dynamo.config.skip_nnmodule_hook_guards = False
        for name, expert in experts.items():
            last_linear = [m for m in expert.blocks[-1].ffn.modules() if isinstance(m, torch.nn.Linear)][-1]
            last_linear.register_forward_pre_hook(self._hook(name))

    def _hook(self, name: str):
        # Opaque to dynamo: traced, the count became a guard (computed == n) that failed at every forward,
        # so the last block recompiled on each (1.6 s of the fast preset's first step at A14B).
        @torch.compiler.disable
        def count(_module, _args) -> None:
            self.computed[name] += 1

        return count

    def snapshot(self) -> dict[str, int]:
        return dict(self.computed)
