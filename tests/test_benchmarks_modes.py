"""benchmarks.modes: --modes names, their order and lever suffixes."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch

from benchmarks import ours
from benchmarks.modes import (
    EXACT_LEVERS,
    MODES,
    Mode,
    OverBudget,
    PeerMode,
    budget_estimate,
    mode_of,
    selected_modes,
    timed_estimate,
    unavailable,
)
from benchmarks.ours import run_ours
from benchmarks.report import Report
from wan.config import load_task_config
from wan.levers.presets import PRESETS


def test_selected_modes_run_in_order_with_the_peer():
    assert selected_modes("cache,default") == ["peer", "default", "cache"]
    assert selected_modes("cache,default~compile") == ["peer", "default~compile", "cache"]
    mode = mode_of("preset_exact~attention_backend=native")
    assert mode.preset == "exact" and mode.levers == {"attention_backend": "native"}
    with pytest.raises(SystemExit, match="unknown lever 'warp'"):
        selected_modes("default~warp")
    with pytest.raises(SystemExit):
        selected_modes("nope")


def test_the_few_step_modes_are_the_lightning_preset_with_the_distill_pair():
    assert MODES["peer_fewstep"] == PeerMode(few_step=True)
    for name in ("preset_lightning", "preset_lightning_exact"):
        assert MODES[name].preset == "lightning" and MODES[name].lora_pair
    assert MODES["preset_lightning_exact"].levers == {**EXACT_LEVERS, "vae_kernels": True}
    assert EXACT_LEVERS == {k: v for k, v in PRESETS["exact"].levers.as_dict().items() if v}
    with pytest.raises(SystemExit, match="peer takes no levers"):
        selected_modes("peer_fewstep~compile")


def test_a_distill_pair_needs_two_experts():
    cpu = torch.device("cpu")
    for name in ("peer_fewstep", "preset_lightning"):
        assert "two-expert" in unavailable(MODES[name], cpu, experts=1)
        assert unavailable(MODES[name], cpu, experts=2) is None


def test_the_budget_estimate_scales_with_the_forwards():
    peer = {
        "measured": {"seconds": 100.0, "forwards": {"high_noise": 52, "low_noise": 28}},
        "setup_seconds": {"warmup_s": 0.0},
    }
    cpu = torch.device("cpu")
    assert budget_estimate(MODES["peer"], peer, cpu, 80) == 0.0
    assert budget_estimate(MODES["default"], peer, cpu, 80) == 100.0  # as many forwards: the peer's time
    assert budget_estimate(MODES["peer_fewstep"], peer, cpu, 4) == 100.0 * 1.5 * 4 / 80


class WarmUpEngine:
    """Records the steps each run is asked for; ``on_run(first)`` lets a test move a fake clock."""

    def __init__(self, on_run=lambda first: None):
        self.runs: list[int] = []
        self.on_run = on_run

    def generate(self, settings, progress=False, on_step=None):
        self.on_run(not self.runs)
        self.runs.append(settings)
        return SimpleNamespace(timings={"text_encoding": 0.5, "high_noise": 1.0, "vae_decode": 2.0})  # 2.5 s once


def run_under_budget(engine: WarmUpEngine, over_budget, warmup_steps: int, steps: int):
    """Run one of our modes with a budget check ``over_budget`` (why a timed-run estimate does not fit, or None)."""
    work = SimpleNamespace(
        task=load_task_config("t2v-A14B"), warmup_steps=warmup_steps, steps=steps, settings=lambda s, fields: s
    )
    counter = SimpleNamespace(reset=lambda: None, total=lambda: 0)
    return run_ours(engine, Mode(), work, counter, model_config={}, device=torch.device("cpu"), over_budget=over_budget)


def estimates_when_nothing_fits(engine: WarmUpEngine, warmup_steps: int, steps: int) -> list[float]:
    """Run one of our modes under a budget nothing fits; the timed-run estimates it was judged by."""
    asked: list[float] = []

    def over_budget(seconds: float) -> str:
        asked.append(seconds)
        return f"over budget: ~{seconds:.0f} s"

    with pytest.raises(OverBudget, match="over budget"):
        run_under_budget(engine, over_budget, warmup_steps, steps)
    return asked


def test_a_mode_is_timed_only_if_its_own_warm_up_says_the_run_fits():
    # 10 s of sampling over 3 steps; text and decode (4 s) once, not once per step
    assert timed_estimate(warmup_s=54.0, compile_s=40.0, fixed_s=4.0, warmup_steps=3, steps=30) == 104.0
    assert timed_estimate(warmup_s=5.0, compile_s=9.0, fixed_s=0.0, warmup_steps=3, steps=30) == 0.0  # never negative

    engine = WarmUpEngine()
    asked = estimates_when_nothing_fits(engine, warmup_steps=2, steps=40)
    assert engine.runs == [2] and len(asked) == 1  # the warm-up ran, the timed run did not
    assert asked[0] >= 2.5  # its text and decode, once


def compiling_clock(monkeypatch) -> Callable[[bool], None]:
    """A fake clock on which the first warm-up takes 200 s, 70 s of it counted as compiling, and later runs 3 s."""
    clock, compiled = [0.0], [0.0]

    def on_run(first: bool) -> None:
        clock[0] += 200.0 if first else 3.0
        compiled[0] += 70.0 if first else 0.0

    monkeypatch.setattr(ours, "now", lambda device: clock[0])
    monkeypatch.setattr(ours, "compile_seconds", lambda: compiled[0])
    return on_run


def test_a_compiling_warm_up_that_seems_over_budget_is_judged_by_a_second_one(monkeypatch):
    """Compiling the counter missed makes the first warm-up look slow; the second, compiled, shows the run fits."""
    engine = WarmUpEngine(compiling_clock(monkeypatch))
    asked = estimates_when_nothing_fits(engine, warmup_steps=1, steps=4)
    assert engine.runs == [1, 1]  # two warm-ups, no timed run
    assert asked == [2.5 + (200.0 - 70.0 - 2.5) * 4, 2.5 + (3.0 - 2.5) * 4]  # judged again on the second


class TimedRunStarted(Exception):
    pass


def test_a_mode_its_second_warm_up_fits_is_timed_and_not_reported_skipped(monkeypatch, tmp_path):
    tick = compiling_clock(monkeypatch)

    def on_run(first: bool) -> None:
        if len(engine.runs) == 2:
            raise TimedRunStarted
        tick(first)

    engine = WarmUpEngine(on_run)
    report = Report(tmp_path / "r.json", time.perf_counter(), 100.0, {})  # 510 s, then 4.5 s, estimated
    with pytest.raises(TimedRunStarted):
        run_under_budget(engine, report.over_budget, warmup_steps=1, steps=4)
    assert report.data["skipped"] == {}
