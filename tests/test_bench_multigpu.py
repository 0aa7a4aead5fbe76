"""scripts/bench_multigpu.py at toy size under torchrun with 2 CPU processes (gloo): every mode runs and agrees."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_multigpu.py"
MODES = ("1gpu", "ulysses", "cfg_parallel", "ulysses+fsdp", "cfg_parallel+fsdp")
KINDS = ("cfg_half", "cfg_full", "cond_full")


def test_tiny_bench_under_torchrun(tmp_path):
    out = tmp_path / "multigpu.json"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(SCRIPT),
        "--tiny",
        "--layers=1",
        "--device=cpu",
        "--dtype=float32",
        "--sizes=64*64",
        "--frame_num=9",
        "--repeats=1",
        f"--out={out}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())

    assert report["status"] == "done" and report["world_size"] == 2 and not report["skipped"]
    assert report["setup"]["tokens"] == {"64*64": {"full": 48, "half": 32}}
    assert tuple(report["modes"]) == MODES
    for mode in MODES:
        result = report["modes"][mode]["64*64"]
        assert all(result["step_s"][kind] > 0 for kind in KINDS)
        assert len(result["step_s_per_rank"]) == (1 if mode == "1gpu" else 2)
        if mode != "1gpu":  # every parallel layout computes the one-process velocity
            assert all(result["max_abs_diff_vs_1gpu"][kind] < 1e-4 for kind in KINDS)
        projection = report["projection_40_steps"][mode]["64*64"]
        assert projection["half_frame_on_s"] > 0 and projection["half_frame_off_s"] > 0
    assert set(report["t5"]) == {"replicated", "fsdp"}
