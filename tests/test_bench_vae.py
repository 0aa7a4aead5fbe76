"""scripts/bench_vae.py on the CPU: every mode encodes and decodes, and its distance from the first is reported."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import bench_vae  # noqa: E402


def test_cpu_report(tmp_path):
    out = tmp_path / "v.json"
    args = ["--device", "cpu", "--size", "32*32", "--frame_num", "5", "--repeats", "1", "--out", str(out)]
    report = bench_vae.main([*args, "--modes", "float32,float32+channels_last,bfloat16"])
    modes = report["modes"]
    assert list(modes) == ["float32", "float32+channels_last", "bfloat16"]
    assert modes["float32"]["decode_psnr_vs_first_db"] > 200  # the reference itself
    assert modes["float32+channels_last"]["decode_psnr_vs_first_db"] > 80  # the same math, another layout
    assert modes["bfloat16"]["decode_psnr_vs_first_db"] < modes["float32+channels_last"]["decode_psnr_vs_first_db"]
    assert all(len(m["encode_s"]) == len(m["decode_s"]) == 1 for m in modes.values())
    assert json.loads(out.read_text())["modes"].keys() == modes.keys()
