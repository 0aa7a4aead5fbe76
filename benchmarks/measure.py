"""Timing, memory and FLOPs: synchronised clocks, peak memory, a matmul peak, forwards counted by hooks.

Everything here measures from outside the code it times (a clock around a call, a pre-hook on a
module, a per-step callback), so the same instruments time diffusers' pipeline and ours.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmarks.weights import TEXT_TOKENS

FLOPS_FORMULA = (
    "per forward = layers * (8 L D^2 + 4 L^2 D + 4 L D^2 + 4 Lt D^2 + 4 L Lt D + 4 L D F): self-attn q/k/v/o "
    "projections, self-attn QK^T and PV, cross-attn q/o projections, cross-attn k/v projections of the Lt text "
    "tokens, cross-attn QK^T and PV, FFN; L video tokens, Lt = 512 text tokens, D = heads * head_dim, F = ffn_dim, "
    "one multiply-add = 2 FLOPs; patch/text/time embeddings, norms, modulation and the head are left out (<1%)"
)


def forward_flops(config: dict[str, Any], tokens: int, text_tokens: int = TEXT_TOKENS) -> float:
    """Analytic FLOPs of one expert forward (see ``FLOPS_FORMULA``)."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    f, n, length = config["ffn_dim"], config["num_layers"], tokens
    per_layer = (
        8 * length * d * d
        + 4 * length * length * d
        + 4 * length * d * d
        + 4 * text_tokens * d * d
        + 4 * length * text_tokens * d
        + 4 * length * d * f
    )
    return float(n * per_layer)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    """Seconds on the host clock once the device has finished what was queued."""
    synchronize(device)
    return time.perf_counter()


def timed(run: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``run``, each synchronised on both ends."""
    seconds = []
    for _ in range(repeats):
        start = now(device)
        run()
        seconds.append(now(device) - start)
    return seconds


def peak_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def matmul_peak(n: int, device: torch.device, dtype: torch.dtype, repeats: int = 10) -> dict[str, Any]:
    """Achievable matmul throughput here: median of ``repeats`` n^3 matmuls on random data after warm-up."""
    generator = torch.Generator(device=device).manual_seed(1)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    for _ in range(3):
        a @ b
    seconds = timed(lambda: a @ b, device, repeats)
    median = statistics.median(seconds)
    return {"n": n, "dtype": str(dtype), "median_s": median, "tflops": 2 * n**3 / median / 1e12, "all_s": seconds}


def loop_probe(expert: torch.nn.Module, inputs: dict[str, Any], repeats: int, device: torch.device) -> dict[str, Any]:
    """Seconds of one forward taken out of the loop: on the loop's own last inputs, then with random latents,
    then with random latents and text embeddings (``profile_forward.py``'s inputs).

    Against the loop's steady seconds per forward this splits a gap between the loop and an isolated
    forward into the loop's own work (all three faster than in the loop) and the inputs' values, which
    change the power drawn at the GPU's power cap and so its clock (only ``captured`` as slow).
    """
    generator = torch.Generator().manual_seed(0)

    def random_like(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=generator).to(t.device, t.dtype)

    random_latents = {**inputs, "hidden_states": random_like(inputs["hidden_states"])}
    variants = {
        "captured": inputs,
        "random_latents": random_latents,
        "random_inputs": {**random_latents, "encoder_hidden_states": random_like(inputs["encoder_hidden_states"])},
    }
    result: dict[str, Any] = {}
    with torch.no_grad():
        for name, kwargs in variants.items():
            expert(**kwargs)  # a first call after switching inputs
            seconds = timed(lambda kwargs=kwargs: expert(**kwargs), device, repeats)
            result[name] = {"median_s": statistics.median(seconds), "seconds": seconds}
    return result


def forward_seconds(expert, hidden: torch.Tensor, context: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward (after one warm-up)."""
    t = torch.full((1,), 900.0, device=hidden.device)
    with torch.no_grad():
        return statistics.median(
            timed(
                lambda: expert(hidden_states=hidden, timestep=t, encoder_hidden_states=context, return_dict=False),
                hidden.device,
                repeats + 1,
            )[1:]
        )


class ForwardCounter:
    """Counts DiT forwards and their token counts per expert with pre-hooks, independently of either loop."""

    def __init__(self, experts: dict[str, torch.nn.Module], patch: tuple[int, int, int]):
        self.tokens: dict[str, list[int]] = {name: [] for name in experts}
        self.last_inputs: dict[str, dict[str, Any]] = {}  # each expert's latest keyword inputs, for the loop probe
        self.patch_volume = math.prod(patch)
        for name, expert in experts.items():
            expert.register_forward_pre_hook(self._hook(name), with_kwargs=True)

    def _hook(self, name: str) -> Callable:
        def record(_module, args, kwargs):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            self.tokens[name].append(math.prod(hidden.shape[2:]) // self.patch_volume)
            if not args:
                self.last_inputs[name] = dict(kwargs)

        return record

    def reset(self) -> None:
        for calls in self.tokens.values():
            calls.clear()

    def total(self) -> int:
        return sum(len(calls) for calls in self.tokens.values())

    def summary(self, config: dict[str, Any]) -> dict[str, Any]:
        return {
            "forwards": {name: len(calls) for name, calls in self.tokens.items()},
            "tokens": {name: sum(calls) for name, calls in self.tokens.items()},
            "flops": sum(forward_flops(config, t) for calls in self.tokens.values() for t in calls),
        }


class StepClock:
    """Seconds and DiT forwards of every step, marked from a per-step callback of either loop."""

    def __init__(self, device: torch.device, counter: ForwardCounter):
        self.device, self.counter = device, counter
        self.marks: list[tuple[str, float, int]] = []  # (expert, seconds, forwards)
        self.last, self.count = 0.0, 0
        self.peak_gb: float | None = None  # peak device memory up to the last step marked (before decode)

    def restart(self) -> None:
        self.last, self.count = now(self.device), self.counter.total()

    def mark(self, expert: str) -> None:
        t, count = now(self.device), self.counter.total()
        self.marks.append((expert, t - self.last, count - self.count))
        self.last, self.count = t, count
        self.peak_gb = peak_memory_gb(self.device)

    def stage_seconds(self, expert: str) -> float:
        return sum(s for e, s, _ in self.marks if e == expert)


def steady_seconds_per_forward(marks: list[tuple[str, float, int]], expert: str) -> float | None:
    """Median seconds per forward over the expert's steps after its first (which carries one-time costs)."""
    steps = [(s, f) for e, s, f in marks if e == expert and f > 0]
    steady = steps[1:] or steps
    return statistics.median(s / f for s, f in steady) if steady else None


@dataclass
class Measurement:
    """One timed end-to-end run of the peer or of one of our modes, before it is summarised."""

    info: dict[str, Any]  # what ran: kind, placement, levers, generation settings
    setup: dict[str, float]  # seconds spent outside the timing (rebuild, moves, placement, levers, warm-up)
    seconds: float  # end to end
    stages: dict[str, float]  # text_encoding, high_noise, low_noise, [completion], vae_decode
    clock: StepClock
    finite: bool  # the video has no NaN or inf
    extra: dict[str, Any] = field(default_factory=dict)  # more measured fields (cache skips)
    loop_forwards: dict[str, int] | None = None  # what our loop itself reports, to compare with the hooks
