"""scripts/bench_attention.py on the CPU: the math kernel runs and is its own reference; GPU kernels report why not."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import bench_attention  # noqa: E402


def test_cpu_report(tmp_path):
    out = tmp_path / "a.json"
    report = bench_attention.main(
        [
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--tokens",
            "64",
            "--repeats",
            "1",
            "--kernels",
            "math,cudnn,flash_4,flash_3,sage",
            "--out",
            str(out),
        ]
    )
    shape = report["shapes"]["custom"]
    assert shape["math"]["relative_error_vs_first"] == 0.0
    assert shape["math"]["ms"] > 0
    assert shape["flops"] == 4 * 40 * 64 * 64 * 128
    assert "error" in shape["cudnn"]  # no cuDNN kernel on a CPU: recorded, not raised
    assert "error" in shape["flash_4"]  # a GPU kernel (or a missing package): recorded, not raised
    assert "error" in shape["flash_3"]
    assert "it needs an NVIDIA GPU" in shape["sage"]["error"]  # the engine's own check and line
    assert json.loads(out.read_text())["shapes"]["custom"]["tokens"] == 64
