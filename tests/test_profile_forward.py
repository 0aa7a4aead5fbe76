"""scripts/profile_forward.py on the CPU: variants parse, run, and the fused variant gives the same output."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import profile_forward  # noqa: E402


def test_cpu_report(tmp_path):
    out = tmp_path / "p.json"
    argv = ["--tiny", "--device", "cpu", "--size", "64*64", "--frame_num", "9", "--repeats", "1", "--vae"]
    variants = "eager+sdpa,eager+fuse,eager+normrope+gelu"
    assert profile_forward.main([*argv, "--variants", variants, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    plain, fused, kernels = (report["variants"][name] for name in variants.split(","))
    assert fused["options"]["fuse_projections"] and not plain["options"]["default_attention"]
    assert kernels["options"]["fuse_norm_rope"] and kernels["options"]["fuse_gelu"]
    assert fused["output_checksum"] == pytest.approx(plain["output_checksum"], rel=1e-5)  # same expert, same math
    assert plain["rel_error_vs_first"] == 0 and fused["rel_error_vs_first"] < 1e-5
    assert kernels["rel_error_vs_first"] == 0  # off CUDA both ops run diffusers' formulas
    assert set(report["vae_decode_s"]) == {"float32", "float32_cudnn_benchmark"}
