"""scripts/bench_a14b.py at toy size on the CPU: all modes run, forwards match the plan, FLOPs and dtypes hold."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from wan.guidance import HIGH, LOW, plan_steps
from wan.solvers import make_scheduler

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_a14b.py"
STEPS = 6  # shift 12: 4 high-noise steps, then 2 low-noise ones
OUR_MODES = ("baseline", "half_frame", "half_frame_default", "cfg_truncate", "half_frame+cfg_truncate")


def load_script():
    spec = importlib.util.spec_from_file_location("bench_a14b", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = load_script()
SMALL = dict(bench.A14B_CONFIG, num_attention_heads=4, attention_head_dim=32, ffn_dim=320, text_dim=64, num_layers=2)


def expected_forwards(steps: int, trunc: int = 0, trunc_high: int = 0) -> int:
    scheduler = make_scheduler("unipc", 12.0)
    scheduler.set_timesteps(steps)
    plans = plan_steps(
        scheduler.timesteps.tolist(),
        boundary=0.875,
        guide_scale_high=4.0,
        guide_scale_low=3.0,
        cfg_truncate_steps=trunc,
        cfg_truncate_high_noise_steps=trunc_high,
    )
    return sum(p.forwards for p in plans)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    command = [
        sys.executable,
        str(SCRIPT),
        "--tiny",
        "--layers=1",
        "--size=64*64",
        "--frame_num=9",
        f"--steps={STEPS}",
        "--warmup_steps=1",
        "--repeats=1",
        "--device=cpu",
        "--dtype=float32",
        f"--out={out}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # toy ops are slower with threads on a busy CPU
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "proj40" in run.stdout  # the table is printed last
    return json.loads(out.read_text())


def test_every_mode_ran(report):
    assert report["status"] == "done" and not report["errors"]
    assert set(report["modes"]) == {"diffusers", *OUR_MODES}
    assert "needs CUDA" in report["skipped"]["cudnn"]
    assert report["setup"]["tokens"] == {"full": 3 * 16, "half": 2 * 16}  # 64*64, 9 frames: 3 latent frames
    for result in report["modes"].values():
        assert result["latents_finite"]
        assert result["steps"] == {HIGH: 4, LOW: 2}
        assert result["seconds_per_step"][HIGH] > 0 and result["seconds_per_step"][LOW] > 0
        assert result["mfu"] > 0
    assert all(v["finite"] for v in report["finite_forward"].values())


def test_forward_counts_match_the_plan(report):
    """Forwards counted by hooks: 2 per step for CFG, fewer by exactly the truncated passes."""
    modes = report["modes"]
    trunc = tuple(report["setup"]["truncation_at_steps"])
    assert trunc == (1, 1)
    full = 2 * STEPS
    truncated = expected_forwards(STEPS, *trunc)
    assert truncated == full - 2  # the last step (low-noise) and the last high-noise step run cond-only
    counts = {name: sum(r["forwards"].values()) for name, r in modes.items()}
    assert counts == {
        "diffusers": full,
        "baseline": full,
        "half_frame": full,
        "half_frame_default": full,
        "cfg_truncate": truncated,
        "half_frame+cfg_truncate": truncated,
    }
    for r in modes.values():
        assert sum(r["forwards"].values()) == r["plan"]["forwards"]


def test_half_frame_runs_high_noise_on_half_the_tokens(report):
    tokens = report["setup"]["tokens"]
    for name, r in report["modes"].items():
        high = r["forwards"][HIGH] * (tokens["half"] if "half_frame" in name else tokens["full"])
        if name == "half_frame_default":  # its window at 6 steps: the first step (0:2 of 40, scaled)
            high = 2 * tokens["half"] + (r["forwards"][HIGH] - 2) * tokens["full"]
        assert r["tokens"] == {HIGH: high, LOW: r["forwards"][LOW] * tokens["full"]}


def test_projection_uses_the_40_step_plan(report):
    modes = report["modes"]
    for name, r in modes.items():
        projection = r["projection_40_steps"]
        assert "projection" in projection["label"]
        assert (projection["high_noise_steps"], projection["low_noise_steps"]) == (26, 14)
        expected = expected_forwards(40, 5, 3) if "cfg_truncate" in name else expected_forwards(40)
        assert projection["forwards"] == expected
    assert modes["baseline"]["projection_40_steps"]["forwards"] == 80
    assert modes["cfg_truncate"]["projection_40_steps"]["forwards"] == 72
    assert modes["baseline"]["speedup_vs_baseline"] == pytest.approx(1.0)


def test_flops_formula_matches_flop_counter():
    """The analytic count equals torch's FLOP counter over the transformer blocks (math SDPA is countable)."""
    model = bench.build_expert(SMALL, torch.device("cpu"), torch.float32, 0, 0.02)
    hidden = torch.randn(1, 16, 3, 8, 8)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(hidden_states=hidden, timestep=torch.tensor([500.0]), encoder_hidden_states=torch.randn(1, 512, 64))
    counts = counter.get_flop_counts()
    blocks = sum(sum(counts[f"WanTransformer3DModel.blocks.{i}"].values()) for i in range(SMALL["num_layers"]))
    assert bench.forward_flops(SMALL, tokens=3 * 4 * 4) == blocks


def test_build_expert_matches_from_pretrained_dtypes(tmp_path):
    """bf16 with the fp32 modules that ``from_pretrained(torch_dtype=bfloat16)`` keeps, and the same RoPE tables."""
    built = bench.build_expert(SMALL, torch.device("cpu"), torch.bfloat16, 0, 0.02)
    bench.build_expert(SMALL, torch.device("cpu"), torch.float32, 0, 0.02).save_pretrained(tmp_path)
    loaded = WanTransformer3DModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)

    def dtypes(model):
        return {n: t.dtype for n, t in [*model.named_parameters(), *model.named_buffers()]}

    assert dtypes(built) == dtypes(loaded)
    assert torch.float32 in set(dtypes(built).values()) and torch.bfloat16 in set(dtypes(built).values())
    torch.testing.assert_close(built.rope.freqs_cos, loaded.rope.freqs_cos, rtol=0, atol=0)
    assert not built.training and not any(p.requires_grad for p in built.parameters())


def test_truncation_scales_with_steps():
    assert bench.truncation(40) == (5, 3)
    assert bench.truncation(8) == (1, 1)
    assert bench.truncation(16) == (2, 1)
