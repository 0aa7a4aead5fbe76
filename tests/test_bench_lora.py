"""scripts/bench_lora.py at toy size on the CPU: the random LoRA goes through the engine's path and fuses away."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_lora.py"


def test_tiny_cpu_run_times_fusing_and_forwards(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--tiny", "--device", "cpu", "--dtype", "float32", "--size", "64*64", "--frame_num", "5", "--repeats", "1"]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--rank", "8", "--out", str(out)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["weights_changed"] and report["peft_layers_left"] == 0
    assert report["load_and_fuse_s"] == report["check_s"] + report["fuse_both_experts_s"] > 0
    assert set(report["forward_s"]["fused"]) == set(report["fused_over_base"]) == {"high_noise", "low_noise"}
    assert report["setup"]["rank"] == 8 and report["setup"]["frames"] == 2
