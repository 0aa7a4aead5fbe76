"""benchmarks.forward_profile: variant names and the settings they stand for."""

import pytest

from benchmarks.forward_profile import classify, variant_settings


def test_variant_names():
    assert variant_settings("compile+static+fuse") == {
        "compile": True,
        "dynamic": False,
        "coordinate_descent_tuning": False,
        "max_autotune": False,
        "fuse_projections": True,
        "fuse_norm_rope": False,
        "fuse_gelu": False,
        "default_attention": True,
    }
    with pytest.raises(SystemExit, match="unknown variant 'exact'"):
        variant_settings("exact")
    with pytest.raises(SystemExit, match="unknown variant 'compile\\+fast'"):
        variant_settings("compile+fast")


def test_kernel_classes():
    assert classify("sm90_xmma_gemm_bf16bf16_bf16f32") == "gemm"
    assert classify("flash_fwd_kernel") == "attention"
    assert classify("triton_poi_fused_add_mul_0") == "triton"
    assert classify("elementwise_kernel") == "other"
