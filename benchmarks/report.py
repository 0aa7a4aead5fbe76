"""The end-to-end benchmark's JSON report: written after every stage, failures recorded, ratios to the peer,
and the table a person reads last.

A run on a lent GPU may be cut short at any moment, so the report is rewritten atomically after
every stage and a failed stage is recorded (with its traceback) while the next one runs.
"""

from __future__ import annotations

import logging
import os
import platform
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers

from wan.config import HIGH, LOW
from wan.video import save_json

logger = logging.getLogger("benchmarks")


def versions() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"


class Report:
    """The JSON document of one run, its file, its clock and its time budget."""

    def __init__(self, out: str | Path, started: float, budget_s: float, fields: dict[str, Any]):
        self.out, self.started, self.budget_s = Path(out), started, budget_s
        self.data: dict[str, Any] = {
            "status": "running",
            "command": shlex.join([sys.executable, *sys.argv]),
            **fields,
            "modes": {},
            "skipped": {},
            "errors": {},
        }

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def save(self) -> None:
        """Write the report atomically, so a run cut short leaves valid JSON."""
        self.data["elapsed_s"] = self.elapsed()
        save_json(self.data, self.out)

    def skip(self, name: str, reason: str) -> None:
        logger.warning("skipping %s (%s)", name, reason)
        self.data["skipped"][name] = reason

    def over_budget(self, estimate_s: float) -> str | None:
        """Why a run estimated at ``estimate_s`` does not fit in the budget (one line), or None if it fits.

        Records nothing: a mode judged twice (a compiling warm-up, then a compiled one) is skipped only by the
        last judgement."""
        if self.elapsed() + estimate_s <= self.budget_s:
            return None
        return f"over budget: {self.elapsed():.0f} s spent + ~{estimate_s:.0f} s > --budget_s {self.budget_s}"

    def fits(self, name: str, estimate_s: float) -> bool:
        """Whether ``name`` (estimated ``estimate_s``) fits in the budget; records the skip otherwise."""
        if reason := self.over_budget(estimate_s):
            self.skip(name, reason)
            return False
        return True

    @contextmanager
    def stage(self, name: str, on_failure: Callable[[], None]) -> Iterator[None]:
        """Log the stage; an exception is recorded and the next stage runs (one GPU shot must not lose it all).

        ``on_failure`` runs outside the exception handler, so the failed stage's frames and tensors can be freed.
        """
        logger.info("[%6.1f s] %s", self.elapsed(), name)
        failed = False
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - the benchmark reports a failed stage and goes on
            logger.error("%s failed: %s", name, exc)
            self.data["errors"][name] = traceback.format_exc(limit=6)
            failed = True
        if failed:
            on_failure()
        self.save()

    def record(self, name: str, result: dict[str, Any]) -> None:
        self.data["modes"][name] = result
        m = result["measured"]
        logger.info(
            "  %s: %.2f s end to end (%s), forwards %s, peak %s GB",
            name,
            m["seconds"],
            ", ".join(f"{k} {v:.2f}" for k, v in m["stages"].items()),
            m["forwards"],
            None if m["peak_memory_gb"] is None else round(m["peak_memory_gb"], 1),
        )

    def finish(self) -> None:
        """Ratios to the peer, measured and projected, and (``speedup_vs``) to every peer of the run."""
        modes = self.data["modes"]
        peers = {name: r for name, r in modes.items() if r.get("kind") == "peer"}
        for result in modes.values():
            for key in ("measured", "projected_released"):
                value = result[key].get("seconds")
                ratios = {
                    name: peer[key]["seconds"] / value if peer[key].get("seconds") and value else None
                    for name, peer in peers.items()
                }
                result[key]["speedup_vs_peer"] = ratios.get("peer")
                result[key]["speedup_vs"] = ratios
        self.data["status"] = "done"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(report: dict[str, Any]) -> None:
    """The summary a person reads last: the measured runs, then the labelled 40-step projections."""
    setup = report["setup"]
    peak = report.get("matmul_peak", {}).get("tflops")
    released = setup.get("released_steps", 40)
    print(
        f"\n{report['device']}  {setup.get('task', 't2v-A14B')}  size {setup['size']}  frames {setup['frame_num']}  "
        f"tokens {setup['tokens']}  matmul peak {_fmt(peak, '.0f')} TFLOP/s"
    )
    header = (
        f"{'mode':<26}{'steps':>6}{'s':>8}{'text':>7}{'high':>8}{'low':>8}{'decode':>8}{'s/st hi':>8}"
        f"{'s/st lo':>8}{'fwd':>5}{'x peer':>7}{'proj s':>8}{'x peer':>7}{'peak GB':>8}{'setup s':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, r in report["modes"].items():
        m, p = r["measured"], r["projected_released"]
        st = m["stages"]
        setup_s = sum(v for k, v in r["setup_seconds"].items() if k != "warmup_s")
        print(
            f"{name:<26}{len(m['step_marks']):>6}{m['seconds']:>8.1f}{st['text_encoding']:>7.2f}{st['high_noise']:>8.2f}"
            f"{st['low_noise']:>8.2f}{st['vae_decode']:>8.2f}{_fmt(m['seconds_per_step'][HIGH], '.2f'):>8}"
            f"{_fmt(m['seconds_per_step'][LOW], '.2f'):>8}{sum(m['forwards'].values()):>5}"
            f"{_fmt(m.get('speedup_vs_peer'), '.2f'):>7}{_fmt(p.get('seconds'), '.0f'):>8}"
            f"{_fmt(p.get('speedup_vs_peer'), '.2f'):>7}{_fmt(m['peak_memory_gb'], '.1f'):>8}{setup_s:>8.1f}"
        )
    print(
        "s: MEASURED end to end (text + sampling + decode) after a warm-up; x peer: speed-up over the task's "
        f"diffusers pipeline in this run (>1 is faster); proj s: PROJECTION of the released {released}-step run "
        "(a distill schedule's own steps); setup s: rebuild + moves + placement + LoRA + levers, outside the timing"
    )
    for name, r in report["modes"].items():
        others = {k: v for k, v in r["measured"].get("speedup_vs", {}).items() if k != "peer" and v}
        if others and r.get("kind") != "peer":
            print(f"{name}: " + ", ".join(f"{v:.2f}x {k}" for k, v in others.items()))
    for name, r in report["modes"].items():
        if "skip_cost" in r:
            c = r["skip_cost"]
            print(
                f"{name}: a skipped forward {c['skipped_forward_s']:.3f} s vs a full one {c['full_forward_s']:.3f} s "
                f"({c['skipped_over_full']:.3f}x); skip fraction in the run {r['measured']['skip_fraction']:.2f}"
            )
    for name, r in report["modes"].items():
        probe = r.get("loop_probe", {})
        if "captured" in probe:
            alone = ", ".join(
                f"{k} {probe[k]['median_s']:.3f}" for k in ("captured", "random_latents", "random_inputs")
            )
            print(f"{name}: a high-noise forward in the loop {_fmt(probe['in_loop_s'], '.3f')} s, alone ({alone}) s")
    for name, reason in report["skipped"].items():
        print(f"skipped {name}: {reason}")
    for name in report["errors"]:
        print(f"FAILED {name} (traceback in the JSON)")
