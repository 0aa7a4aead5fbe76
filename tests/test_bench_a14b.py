"""scripts/bench_a14b.py at toy size on the CPU: every mode that runs on a CPU runs end to end, the rest
say why; forwards match the plan, the 40-step projection is labelled, FLOPs and dtypes hold."""

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
from transformers import UMT5Config

from wan.config import HIGH, LOW
from wan.levers.presets import PRESETS
from wan.plan import plan_steps
from wan.solvers import make_scheduler

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_a14b.py"
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
}
CUDA_ONLY = {"stream", "compile", "fp8", "fp8+compile"} | {
    f"attention:{b}" for b in ("_native_cudnn", "flash", "_native_flash", "_native_efficient", "flash_4", "sage")
}
STAGES = ("text_encoding", "high_noise", "low_noise", "vae_decode")


def load_script():
    spec = importlib.util.spec_from_file_location("bench_a14b", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
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
        "--size=64*64",
        "--frame_num=9",
        f"--steps={STEPS}",
        "--warmup_steps=3",
        "--repeats=1",
        "--loop_probe=1",
        "--device=cpu",
        "--dtype=float32",
        f"--out={out}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # toy ops are slower with threads on a busy CPU
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "proj40" in run.stdout  # the table is printed last
    return json.loads(out.read_text())


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
        assert m["steps"] == {HIGH: 4, LOW: 2}
        assert m["seconds_per_step"][HIGH] > 0 and m["seconds_per_step"][LOW] > 0
        assert m["video_finite"]
        assert m["speedup_vs_peer"] > 0 and r["projected_40_steps"]["speedup_vs_peer"] > 0
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
    assert modes["cache"]["levers"]["cache"] == bench.CACHE_SPEC
    assert modes["attention:native"]["levers"]["attention_backend"] == "native"
    assert modes["preset_fast"]["levers"]["cache"] == PRESETS["fast"].levers.cache
    assert not modes["preset_exact"]["levers"]["compile"]  # the preset leaves compile out on a CPU, and says so
    assert any("compile left out" in note for note in modes["preset_exact"]["preset_notes"])
    assert modes["preset_fast"]["generation_at_40"] == PRESETS["fast"].generation
    assert modes["vae_bf16"]["vae_dtype"] == "bfloat16" and modes["preset_fast"]["vae_dtype"] == "bfloat16"
    assert modes["attention:native"]["vae_dtype"] == "float32"  # the shared VAE is restored for the next mode


def test_forward_counts_match_the_plan(report):
    """Forwards counted by hooks: 2 per step for CFG, fewer by exactly the truncated passes."""
    modes = report["modes"]
    full = 2 * STEPS
    truncated = expected_forwards(STEPS, 1, 1)  # the preset's 5/3 of 40 steps, scaled to 6
    assert truncated == full - 2
    counts = {name: sum(r["measured"]["forwards"].values()) for name, r in modes.items()}
    assert counts == {name: truncated if name.startswith("preset_fast") else full for name in modes}
    for r in modes.values():
        assert r["measured"]["forwards"] == r["measured"]["plan"]["forwards"]
        assert sum(f for _, _, f in r["measured"]["step_marks"]) == sum(r["measured"]["forwards"].values())
        if r["kind"] == "ours":
            assert r["measured"]["loop_forwards"] == r["measured"]["forwards"]


def test_projection_uses_the_40_step_plan(report):
    for name, r in report["modes"].items():
        projection = r["projected_40_steps"]
        assert "PROJECTION" in projection["label"]
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


def test_loop_probe_feeds_the_loop_inputs_then_random_ones():
    calls = []

    class Recorder(torch.nn.Module):
        def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False):
            calls.append((hidden_states, timestep, encoder_hidden_states))
            return (hidden_states,)

    inputs = {
        "hidden_states": torch.ones(1, 2, 3),
        "timestep": torch.tensor([5.0]),
        "encoder_hidden_states": torch.ones(1, 4, 2),
    }
    probe = bench.loop_probe(Recorder(), inputs, 2, torch.device("cpu"))
    assert [len(probe[k]["seconds"]) for k in ("captured", "random_latents", "random_inputs")] == [2, 2, 2]
    assert len(calls) == 9  # one untimed call, then two timed, per variant
    captured, random_latents, random_inputs = calls[0], calls[3], calls[6]
    assert captured[0] is inputs["hidden_states"] and captured[2] is inputs["encoder_hidden_states"]
    assert (
        not torch.equal(random_latents[0], inputs["hidden_states"])
        and random_latents[2] is inputs["encoder_hidden_states"]
    )
    assert not torch.equal(random_inputs[2], inputs["encoder_hidden_states"])
    assert all(call[1] is inputs["timestep"] for call in calls)
    assert random_inputs[0].shape == inputs["hidden_states"].shape and random_inputs[2].dtype == torch.float32


def test_selected_modes_run_in_order_with_the_peer():
    assert bench.selected_modes("cache,default") == ["peer", "default", "cache"]
    assert bench.selected_modes("cache,default~compile") == ["peer", "default~compile", "cache"]
    mode = bench.mode_of("preset_exact~attention_backend=native")
    assert mode.preset == "exact" and mode.levers == {"attention_backend": "native"}
    with pytest.raises(SystemExit, match="unknown lever 'warp'"):
        bench.selected_modes("default~warp")
    with pytest.raises(SystemExit):
        bench.selected_modes("nope")


def test_preset_truncation_scales_with_steps():
    fields = {"cfg_truncate_steps": 5, "cfg_truncate_high_noise_steps": 3}
    assert bench.scaled_generation(fields, 40) == fields
    assert bench.scaled_generation(fields, 6) == {"cfg_truncate_steps": 1, "cfg_truncate_high_noise_steps": 1}
    assert bench.scaled_generation(fields, 16) == {"cfg_truncate_steps": 2, "cfg_truncate_high_noise_steps": 1}


def test_text_encoder_is_umt5_xxl_in_bf16_with_fp32_wo():
    config = UMT5Config(**bench.UMT5_XXL)
    assert (config.dense_act_fn, config.is_gated_act, config.vocab_size) == ("gelu_new", True, 256384)
    tiny = dict(bench.UMT5_XXL, **bench.TINY_UMT5, vocab_size=64)
    model = bench.build_text_encoder(tiny, torch.device("cpu"), torch.bfloat16, 0)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert all((dtype == torch.float32) == (".wo." in name) for name, dtype in dtypes.items())


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
