"""scripts/bench_e2e.py at toy size on the CPU: every mode that runs on a CPU runs end to end, the rest
say why; forwards match the plan, the projection to the released steps is labelled, FLOPs and dtypes
hold; the image tasks and the few-step modes run against their own peers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.modes import CACHE_SPEC
from wan.config import HIGH, LOW
from wan.levers.presets import PRESETS
from wan.plan import plan_steps
from wan.solvers import make_scheduler

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_e2e.py"
STEPS = 6  # shift 12: 4 high-noise steps, then 2 low-noise ones
RUN_ON_CPU = {
    "peer",
    "default",
    "preset_exact",
    "preset_fast@taylorseer:2",
    "preset_fast",
    "offload",
    "resident_lean",
    "vae_tiling",
    "cache",
    "vae_bf16",
    "attention:native",
    "peer_fewstep",
    "preset_lightning",
}
CUDA_ONLY = {"stream", "compile", "fp8", "fp8+compile", "preset_lightning_exact"} | {
    f"attention:{b}"
    for b in ("_native_cudnn", "flash", "_native_flash", "_native_efficient", "flash_4", "flash_3", "sage")
}
STAGES = ("text_encoding", "high_noise", "low_noise", "vae_decode")


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


def run_bench(out: Path, *flags: str) -> dict:
    command = [
        sys.executable,
        str(SCRIPT),
        "--tiny",
        "--size=64*64",
        "--frame_num=9",
        f"--steps={STEPS}",
        "--device=cpu",
        "--dtype=float32",
        f"--out={out}",
        *flags,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # toy ops are slower with threads on a busy CPU
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "proj s" in run.stdout  # the table is printed last
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    return run_bench(out, "--warmup_steps=3", "--repeats=1", "--loop_probe=1", "--lora_rank=4")


def test_every_cpu_mode_ran_end_to_end(report):
    assert report["status"] == "done" and not report["errors"]
    assert set(report["modes"]) == RUN_ON_CPU
    assert list(report["modes"])[0] == "peer"
    assert report["setup"]["tokens"] == 3 * 16  # 64*64, 9 frames: 3 latent frames of 4x4 patches
    for name, r in report["modes"].items():
        m = r["measured"]
        assert "MEASURED" in m["label"]
        assert all(m["stages"][s] > 0 for s in STAGES), name
        assert m["seconds"] == pytest.approx(sum(m["stages"].values()))
        assert m["steps"] == ({HIGH: 2, LOW: 2} if "lightning" in name or "fewstep" in name else {HIGH: 4, LOW: 2})
        assert m["seconds_per_step"][HIGH] > 0 and m["seconds_per_step"][LOW] > 0
        assert m["video_finite"]
        assert m["speedup_vs_peer"] > 0 and r["projected_released"]["speedup_vs_peer"] > 0
        assert r["setup_seconds"]["warmup_s"] > 0
    assert report["modes"]["peer"]["measured"]["speedup_vs_peer"] == pytest.approx(1.0)


def test_skipped_modes_say_why(report):
    assert set(report["skipped"]) == CUDA_ONLY
    assert "CUDA" in report["skipped"]["stream"]
    assert "compute capability" in report["skipped"]["fp8"]
    assert all(report["skipped"][name] for name in CUDA_ONLY)


def test_modes_use_the_engine_placements_and_presets(report):
    modes = report["modes"]
    assert modes["offload"]["placement"] == "model_offload"
    assert modes["default"]["placement"] == "resident"
    assert modes["cache"]["levers"]["cache"] == CACHE_SPEC
    assert modes["attention:native"]["levers"]["attention_backend"] == "native"
    assert modes["preset_fast"]["levers"]["cache"] == PRESETS["fast"].levers.cache
    assert not modes["preset_exact"]["levers"]["compile"]  # the preset leaves compile out on a CPU, and says so
    assert any("compile left out" in note for note in modes["preset_exact"]["preset_notes"])
    assert modes["preset_fast"]["generation_released"] == PRESETS["fast"].generation
    assert modes["vae_bf16"]["vae_dtype"] == "bfloat16" and modes["preset_fast"]["vae_dtype"] == "bfloat16"
    assert modes["attention:native"]["vae_dtype"] == "float32"  # the shared VAE is restored for the next mode


def test_forward_counts_match_the_plan(report):
    """Forwards counted by hooks: 2 per step for CFG, fewer by exactly the truncated passes."""
    modes = report["modes"]
    full = 2 * STEPS
    truncated = expected_forwards(STEPS, 1, 1)  # the preset's 5/3 of 40 steps, scaled to 6
    assert truncated == full - 2
    counts = {name: sum(r["measured"]["forwards"].values()) for name, r in modes.items()}
    few_step = {"peer_fewstep", "preset_lightning"}  # 4 steps, guidance 1: one forward a step
    expected = {
        name: 4 if name in few_step else truncated if name.startswith("preset_fast") else full for name in modes
    }
    assert counts == expected
    for r in modes.values():
        assert r["measured"]["forwards"] == r["measured"]["plan"]["forwards"]
        assert sum(f for _, _, f in r["measured"]["step_marks"]) == sum(r["measured"]["forwards"].values())
        if r["kind"] == "ours":
            assert r["measured"]["loop_forwards"] == r["measured"]["forwards"]


def test_projection_uses_the_released_plan(report):
    for name, r in report["modes"].items():
        projection = r["projected_released"]
        assert "PROJECTION" in projection["label"]
        if name in ("peer_fewstep", "preset_lightning"):  # a distill schedule's released plan is its own 4 steps
            assert (projection["high_noise_steps"], projection["low_noise_steps"]) == (2, 2)
            assert projection["seconds"] == pytest.approx(r["measured"]["seconds"])
            continue
        assert (projection["high_noise_steps"], projection["low_noise_steps"]) == (26, 14)
        expected = expected_forwards(40, 5, 3) if name.startswith("preset_fast") else expected_forwards(40)
        assert sum(projection["forwards"].values()) == expected
        assert projection["seconds"] == pytest.approx(sum(projection["stages"].values()))
        assert projection["seconds"] > r["measured"]["seconds"]
        for stage in ("text_encoding", "vae_decode"):  # measured once per video: carried over as measured
            assert projection["stages"][stage] == r["measured"]["stages"][stage]


def test_cache_reports_skips_and_the_cost_of_a_skipped_forward(report):
    cache = report["modes"]["cache"]
    m = cache["measured"]
    assert 0 <= m["skip_fraction"] <= 1
    assert all(m["computed_forwards"][e] <= m["forwards"][e] for e in (HIGH, LOW))
    probe = cache["skip_cost"]
    assert probe["computed_per_call"] == [1, 0]  # full, then skipped by First Block Cache
    assert probe["full_forward_s"] > 0 and probe["skipped_forward_s"] > 0


def test_loop_probe_times_resident_modes_and_says_why_not_elsewhere(report):
    for name in ("peer", "default", "preset_exact"):
        probe = report["modes"][name]["loop_probe"]
        assert probe["in_loop_s"] == report["modes"][name]["measured"]["steady_seconds_per_forward"][HIGH]
        for variant in ("captured", "random_latents", "random_inputs"):
            assert len(probe[variant]["seconds"]) == 1 and probe[variant]["median_s"] > 0
    assert "cache" in report["modes"]["preset_fast"]["loop_probe"]["skipped"]
    assert "model_offload" in report["modes"]["offload"]["loop_probe"]["skipped"]


def test_only_the_tiling_mode_decodes_in_tiles_unless_the_run_asks(report):
    assert not report["setup"]["vae_tiling"]
    tiled = {name for name, r in report["modes"].items() if r["vae_tiling"]}
    assert tiled == {"vae_tiling"}  # the modes after it decode whole again


def test_the_few_step_modes_run_the_same_distill_pair(report):
    modes = report["modes"]
    assert modes["peer_fewstep"]["kind"] == "peer" and modes["peer_fewstep"]["generation"]["sample_steps"] == 4
    lightning = modes["preset_lightning"]
    assert lightning["loras"] == ["high_noise_model.safetensors", "low_noise_model.safetensors"]
    assert lightning["setup_seconds"]["lora_fuse_s"] > 0
    ratios = lightning["measured"]["speedup_vs"]
    assert set(ratios) == {"peer", "peer_fewstep"} and all(v > 0 for v in ratios.values())
    assert modes["peer"]["measured"]["speedup_vs"]["peer"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("task", "peer", "experts"),
    [("i2v-A14B", "WanImageToVideoPipeline", {HIGH, LOW}), ("ti2v-5B", "WanPipeline", {HIGH})],
)
def test_image_tasks_run_against_their_own_peer(tmp_path, task, peer, experts):
    modes = "--modes=peer,default,offload,peer_fewstep"
    flags = ("--warmup_steps=1", "--lora_rank=4", "--vae_tiling", modes)  # 720p on an 80-GB GPU: all tiled
    report = run_bench(tmp_path / "b.json", f"--task={task}", *flags)
    assert report["status"] == "done" and not report["errors"]
    assert report["setup"]["vae_tiling"] and all(r["vae_tiling"] for r in report["modes"].values())
    assert set(report["modes"]) == {"peer", "default", "offload"} | ({"peer_fewstep"} if len(experts) == 2 else set())
    assert report["modes"]["peer"]["pipeline"] == peer
    assert report["setup"]["task"] == task
    released = 50 if task == "ti2v-5B" else 40
    assert report["setup"]["released_steps"] == released
    for name, r in report["modes"].items():
        if name == "peer_fewstep":
            continue
        forwards = r["measured"]["forwards"]
        assert {e for e, n in forwards.items() if n} == experts, name
        assert sum(forwards.values()) == 2 * STEPS  # CFG on every step
        assert r["measured"]["video_finite"]
        assert sum(r["projected_released"]["forwards"].values()) == 2 * released
        if r["kind"] == "ours" and task == "i2v-A14B":  # the peer encodes its image inside its first step
            assert r["measured"]["stages"]["image_encoding"] > 0
    assert report["build"]["params"]["experts"] == len(experts)
    if len(experts) == 1:
        assert "two-expert" in report["skipped"]["peer_fewstep"]
