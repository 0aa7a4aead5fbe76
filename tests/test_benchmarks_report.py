"""benchmarks.report: the JSON survives a failed stage, the budget skips with a reason, ratios are to the peer."""

from __future__ import annotations

import json
import time

from benchmarks.report import Report


def record(seconds: float, projected: float, kind: str = "ours") -> dict:
    return {"kind": kind, "measured": {"seconds": seconds}, "projected_released": {"seconds": projected}}


def test_failed_stage_is_recorded_and_the_next_one_runs(tmp_path):
    out = tmp_path / "r" / "bench.json"
    report = Report(out, time.perf_counter(), 100.0, {"device": "cpu"})
    cleaned = []
    with report.stage("boom", lambda: cleaned.append(True)):
        raise RuntimeError("out of memory")
    with report.stage("fine", lambda: cleaned.append(False)):
        pass
    data = json.loads(out.read_text())
    assert cleaned == [True]
    assert set(data["errors"]) == {"boom"} and "out of memory" in data["errors"]["boom"]
    assert data["status"] == "running" and data["device"] == "cpu" and data["elapsed_s"] >= 0
    assert not list(out.parent.glob("*.tmp*"))  # written atomically: no temporary file left


def test_budget_skips_with_the_reason(tmp_path):
    report = Report(tmp_path / "b.json", time.perf_counter(), 10.0, {})
    assert report.fits("quick", 1.0)
    assert not report.fits("slow", 60.0)
    assert "--budget_s 10.0" in report.data["skipped"]["slow"] and "quick" not in report.data["skipped"]
    assert "--budget_s 10.0" in report.over_budget(60.0) and report.over_budget(1.0) is None
    assert set(report.data["skipped"]) == {"slow"}  # asking why records nothing


def test_finish_gives_ratios_to_the_peer(tmp_path):
    report = Report(tmp_path / "f.json", time.perf_counter(), 10.0, {})
    report.data["modes"] = {
        "peer": record(10.0, 100.0, "peer"),
        "peer_fewstep": record(4.0, 4.0, "peer"),
        "fast": record(5.0, 40.0),
        "lightning": record(2.0, 2.0),
    }
    report.finish()
    modes = report.data["modes"]
    assert modes["peer"]["measured"]["speedup_vs_peer"] == 1.0
    assert modes["fast"]["measured"]["speedup_vs_peer"] == 2.0
    assert modes["fast"]["projected_released"]["speedup_vs_peer"] == 2.5
    assert modes["lightning"]["measured"]["speedup_vs"] == {"peer": 5.0, "peer_fewstep": 2.0}
    assert report.data["status"] == "done"
