"""Speed levers on the CPU: compile keeps the video, caching stays within its bound, bad input is one line."""

import copy
import dataclasses
import json
import re
import types

import pytest
import torch
from tiny_models import as_components

from wan.config import load_task_config
from wan.errors import ConfigError
from wan.levers import REGISTRY, Levers, apply_levers, attention
from wan.levers.cache import (
    CALIBRATION_FILE,
    EXPERTS,
    CacheSpec,
    ComputeCounter,
    cache_settings,
    counting_computed,
    denoised_latents,
    parse_cache_spec,
    read_calibration,
)
from wan.levers.compile import compile_seconds, reset_compiled
from wan.levers.presets import PRESETS, preset_generation_defaults, resolve_levers
from wan.settings import GenerationSettings
from wan.text2video import WanT2V

SETTINGS = GenerationSettings(prompt="a red square moving left", seed=5, size="32*32", frame_num=9, sample_steps=8)
CPU = torch.device("cpu")


def make_pipe(test_config, parts) -> WanT2V:
    """A pipeline of its own (levers change the experts) on copies of the session's tiny parts."""
    return WanT2V(test_config, as_components(copy.deepcopy(parts)))


@pytest.fixture(scope="module")
def baseline(test_config, parts) -> torch.Tensor:
    return make_pipe(test_config, parts).generate(SETTINGS, progress=False).video


def test_compile_keeps_the_video_and_reports_its_time(test_config, parts, baseline):
    reset_compiled()
    pipe = make_pipe(test_config, parts)
    apply_levers(pipe, Levers(compile=True))
    before = compile_seconds()
    video = pipe.generate(SETTINGS, progress=False).video
    torch.testing.assert_close(video, baseline, rtol=1e-4, atol=1e-4)
    assert compile_seconds() > before
    # Half-frame generation runs two sequence lengths: compiled once (dynamic shapes), not again per run.
    half = dataclasses.replace(SETTINGS, half_frame=True)
    pipe.generate(half, progress=False)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs > 0
    pipe.generate(half, progress=False)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    reset_compiled()


@pytest.mark.parametrize("spec", ["fbc:0.2", "taylorseer:2", "sea:1.0"])
def test_cache_skips_forwards_and_stays_close(test_config, parts, baseline, spec):
    pipe = make_pipe(test_config, parts)
    apply_levers(pipe, Levers(cache=spec))
    result = pipe.generate(SETTINGS, progress=False)
    computed = sum(pipe.compute_counter.snapshot().values())
    assert 0 < computed < sum(result.forwards.values())  # some forwards skipped their blocks
    assert (result.video - baseline).abs().mean() < 0.2  # changed, but the same picture
    again = pipe.generate(SETTINGS, progress=False)  # state reset per video: same result twice
    assert torch.equal(result.video, again.video)


def test_taylorseer_order_two_predicts_differently(test_config, parts, baseline):
    assert parse_cache_spec("taylorseer:4:2") == CacheSpec("taylorseer", (4.0,), order=2)
    videos = {}
    for spec in ("taylorseer:3", "taylorseer:3:2"):
        pipe = make_pipe(test_config, parts)
        apply_levers(pipe, Levers(cache=spec))
        videos[spec] = pipe.generate(SETTINGS, progress=False).video
    assert not torch.equal(videos["taylorseer:3"], videos["taylorseer:3:2"])  # the second-order term is used
    assert (videos["taylorseer:3:2"] - baseline).abs().mean() < 0.2


def test_sea_spec_takes_a_threshold_and_a_run():
    assert parse_cache_spec("sea:0.5:3") == CacheSpec("sea", (0.5,), max_run=(3,))
    assert parse_cache_spec("sea:0.5:3+5") == CacheSpec("sea", (0.5,), max_run=(3, 5))
    assert parse_cache_spec("sea").max_run == () and parse_cache_spec("sea").value_for("high_noise") is None


def test_a_sea_run_per_expert_reaches_each_experts_hook(test_config, parts, tmp_path):
    assert cache_settings("sea:0.5:3+5", tmp_path, EXPERTS)["max_run"] == "3+5"
    assert cache_settings("sea:0.5:4+4", tmp_path, EXPERTS)["max_run"] == 4
    pipe = make_pipe(test_config, parts)
    apply_levers(pipe, Levers(cache="sea:0.5:3+5"))
    runs = {name: expert._cache_config.max_consecutive_cached for name, expert in pipe.experts.items()}
    assert runs == {"high_noise": 3, "low_noise": 5}


def test_an_unset_sea_knob_and_run_come_from_the_calibration_else_the_fast_presets(tmp_path):
    calibrated = {"sea": {"high_noise": 0.25, "low_noise": 0.75, "max_run": 5}}
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(calibrated))
    assert cache_settings("sea", tmp_path, EXPERTS) == {
        "method": "sea",
        "max_run": 5,
        "high_noise": 0.25,
        "low_noise": 0.75,
    }
    assert cache_settings("sea:0.5:2", tmp_path, EXPERTS)["max_run"] == 2  # the spec wins
    fast = PRESETS["fast"].levers.cache
    assert cache_settings("sea", None, EXPERTS) == cache_settings(fast, None, EXPERTS)  # uncalibrated: the preset's
    assert cache_settings("sea", None, EXPERTS)["max_run"] == "3+5"
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"sea": {**calibrated["sea"], "max_run": "2+4"}}))
    assert CacheSpec("sea").run(read_calibration(tmp_path), "low_noise") == 4  # a calibrated run per expert
    with pytest.raises(ConfigError, match="cache_calibration.json: max_run 9: the sea run must be a whole number"):
        CacheSpec("sea").run({"sea": {"max_run": 9}}, "low_noise")  # a hand-edited file, out of range


def test_per_expert_knobs_go_to_their_experts():
    spec = parse_cache_spec("taylorseer:6+3:2")
    assert spec == CacheSpec("taylorseer", (6.0, 3.0), order=2)
    assert (spec.value_for("high_noise"), spec.value_for("low_noise")) == (6.0, 3.0)
    assert parse_cache_spec("fbc:0.05").value_for("low_noise") == 0.05
    assert parse_cache_spec("fbc").value_for("high_noise") is None  # calibrated or default


def test_per_expert_intervals_compute_each_expert_at_its_own_rate(test_config, parts):
    counts = {}
    settings = dataclasses.replace(SETTINGS, sample_steps=24)  # enough steps in each expert for both rates
    for spec in ("taylorseer:2", "taylorseer:2+4", "taylorseer:4+2"):
        pipe = make_pipe(test_config, parts)
        apply_levers(pipe, Levers(cache=spec))
        pipe.generate(settings, progress=False)
        counts[spec] = pipe.compute_counter.snapshot()
    assert counts["taylorseer:2+4"]["high_noise"] == counts["taylorseer:2"]["high_noise"]
    assert counts["taylorseer:2+4"]["low_noise"] < counts["taylorseer:2"]["low_noise"]
    assert counts["taylorseer:4+2"]["high_noise"] < counts["taylorseer:2"]["high_noise"]
    assert counts["taylorseer:4+2"]["low_noise"] == counts["taylorseer:2"]["low_noise"]


def test_compute_counter_counts_under_compile(test_config, parts):
    """The fast preset compiles the cached blocks: the counter must still see the forwards that computed."""
    reset_compiled()
    plain = make_pipe(test_config, parts)
    apply_levers(plain, Levers(cache="taylorseer:2"))
    plain.generate(SETTINGS, progress=False)
    compiled = make_pipe(test_config, parts)
    apply_levers(compiled, Levers(cache="taylorseer:2", compile=True))
    compiled.generate(SETTINGS, progress=False)
    assert compiled.compute_counter.snapshot() == plain.compute_counter.snapshot()
    reset_compiled()


def test_counting_computed_reports_one_videos_work(test_config, parts):
    plain = make_pipe(test_config, parts)
    with counting_computed(plain) as computed:
        plain.generate(SETTINGS, progress=False)
    assert computed == {}  # no cache lever, nothing to report
    cached = make_pipe(test_config, parts)
    apply_levers(cached, Levers(cache="sea:1.0"))
    cached.generate(SETTINGS, progress=False)  # an earlier video does not count
    with counting_computed(cached) as computed:
        result = cached.generate(SETTINGS, progress=False)
    assert 0 < sum(computed.values()) < sum(result.forwards.values())


def test_compute_counter_counts_every_full_forward(test_config, parts, baseline):
    pipe = make_pipe(test_config, parts)
    counter = ComputeCounter(pipe.experts)
    result = pipe.generate(SETTINGS, progress=False)
    assert counter.snapshot() == result.forwards


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lru", "unknown --cache method 'lru'"),
        ("fbc:abc", "'abc' is not a number"),
        ("fbc:1.5", "must be in (0, 1)"),
        ("taylorseer:1", "whole number >= 2"),
        ("taylorseer:4:3", "order must be 1 or 2"),
        ("taylorseer::2", "only taylorseer (an order) and sea (a run) take a third field, after their knob"),
        ("fbc:0.1:2", "only taylorseer (an order) and sea (a run) take a third field"),
        ("sea:0.5:0", "the sea run must be a whole number from 1 to 8"),
        ("sea:0.5:3+5+2", "the sea run must be a whole number from 1 to 8, or two as HIGH+LOW"),
        ("sea:0.5:3+9", "the sea run must be a whole number from 1 to 8"),
        ("taylorseer:6+3+2", "give one value, or two as HIGH+LOW (e.g. taylorseer:3+4)"),
        ("fbc:0.05+1.5", "must be in (0, 1)"),
        ("taylorseer:6+", "'' is not a number"),
        ("sea:0", "the sea threshold must be positive"),
    ],
)
def test_bad_cache_specs(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_cache_spec(text)


def test_presets_leave_out_what_the_cpu_lacks_but_explicit_flags_fail():
    levers, notes = resolve_levers("fast", {}, CPU)
    assert not levers.fp8 and not levers.compile and levers.cache == PRESETS["fast"].levers.cache
    assert any("compile left out" in n for n in notes)
    with pytest.raises(ConfigError, match="--fp8: float8 needs a GPU"):
        resolve_levers("fast", {"fp8": "all"}, CPU)
    explicit, _ = resolve_levers("fast", {"compile": True, "cache": ""}, CPU)
    assert explicit.compile and not explicit.cache  # explicit flags win, "none" switches the cache off
    assert resolve_levers(None, {}, CPU) == (Levers(), [])
    exact, notes = resolve_levers("exact", {}, CPU)
    assert exact.fuse_projections and not (exact.compile or exact.fuse_norm_rope or exact.fuse_gelu)
    gpu_only = [lever.name for lever in REGISTRY if lever.gpu_only and getattr(PRESETS["exact"].levers, lever.name)]
    assert [n.split(" left out")[0] for n in notes] == [f"preset exact: {n}" for n in gpu_only]
    assert resolve_levers(None, {"fuse_norm_rope": True, "fuse_gelu": True}, CPU)[0].fuse_gelu  # the math runs anywhere
    assert preset_generation_defaults("fast")["cfg_truncate_steps"] == 5 and preset_generation_defaults(None) == {}
    with pytest.raises(ConfigError, match="unknown --preset"):
        resolve_levers("turbo", {}, CPU)


def stand_in_for(monkeypatch, backend: str, problem) -> None:
    """``problem(device, parallel)`` answers for ``backend``'s installed-kernel check; the others stay real."""
    real = attention.local_kernel_problem

    def local_kernel_problem(name, device, parallel=False):
        return problem(device, parallel) if name == backend else real(name, device, parallel)

    monkeypatch.setattr(attention, "local_kernel_problem", local_kernel_problem)


def test_flash_4_is_the_default_attention_only_where_it_runs(monkeypatch):
    assert resolve_levers("exact", {}, CPU)[0].attention_backend is None  # diffusers' default off Hopper
    with pytest.raises(ConfigError, match="--attention_backend flash_4: it needs a Hopper or newer GPU"):
        resolve_levers(None, {"attention_backend": "flash_4"}, CPU)

    def on_hopper(device, parallel=False):
        return "no context-parallel path" if parallel else None

    stand_in_for(monkeypatch, "flash_4", on_hopper)
    assert resolve_levers(None, {}, CPU)[0].attention_backend == "flash_4"
    assert resolve_levers("exact", {}, CPU)[0].attention_backend == "flash_4"
    assert resolve_levers("exact", {"attention_backend": "native"}, CPU)[0].attention_backend == "native"
    assert resolve_levers("fast", {}, CPU, parallel=True)[0].attention_backend is None
    with pytest.raises(ConfigError, match="flash_4: no context-parallel path"):
        resolve_levers(None, {"attention_backend": "flash_4"}, CPU, parallel=True)
    with pytest.raises(ConfigError, match="^--attention_backend sage: it needs an NVIDIA GPU; run without it$"):
        resolve_levers("fast", {"attention_backend": "sage"}, CPU)


def test_exact_takes_flash_3_where_flash_4_is_not_installed(monkeypatch):
    stand_in_for(monkeypatch, "flash_3", lambda device, parallel=False: "one GPU" if parallel else None)
    assert resolve_levers("exact", {}, CPU)[0].attention_backend == "flash_3"
    assert resolve_levers("exact", {}, CPU, parallel=True)[0].attention_backend is None
    with pytest.raises(ConfigError, match="^--attention_backend flash_3: one GPU; run without it$"):
        resolve_levers(None, {"attention_backend": "flash_3"}, CPU, parallel=True)


def test_fast_takes_sage_where_it_runs_and_says_why_not_elsewhere(monkeypatch):
    def sage_here(device, parallel=False):
        return "one GPU only" if parallel else None

    stand_in_for(monkeypatch, "sage", sage_here)
    levers, notes = resolve_levers("fast", {}, CPU)
    assert levers == dataclasses.replace(
        PRESETS["fast"].levers, attention_backend="sage", compile=False, vae_kernels=False
    )
    gpu_only = ("compile", "vae_kernels")
    assert notes == [f"preset fast: {n} left out on cpu (it pays off on a GPU only)" for n in gpu_only]
    assert resolve_levers("exact", {}, CPU)[0].attention_backend is None  # quantised: never in exact
    assert resolve_levers("fast", {"attention_backend": "native"}, CPU)[0].attention_backend == "native"
    levers, notes = resolve_levers("fast", {}, CPU, parallel=True)
    assert levers.attention_backend is None and "preset fast: attention sage left out (one GPU only)" in notes
    stand_in_for(monkeypatch, "sage", lambda device, parallel=False: "it needs an NVIDIA GPU")
    levers, notes = resolve_levers("fast", {}, CPU)
    assert levers.attention_backend is None and "preset fast: attention sage left out (it needs an NVIDIA GPU)" in notes


def test_unknown_attention_backend_is_one_line(test_config, parts):
    with pytest.raises(ConfigError, match="unknown --attention_backend 'warp'"):
        apply_levers(make_pipe(test_config, parts), Levers(attention_backend="warp"))


def test_sea_cache_watches_the_denoised_channels_of_an_image_to_video_expert():
    """An I2V expert's input carries the mask and the image latent after the latents being denoised."""
    expert = types.SimpleNamespace(config=types.SimpleNamespace(out_channels=16))
    hidden = torch.randn(2, 36, 3, 4, 4)
    watched = denoised_latents(expert, (), {"hidden_states": hidden})
    assert [w.shape for w in watched] == [(16, 3, 4, 4)] * 2
    torch.testing.assert_close(watched[1], hidden[1, :16])
    assert denoised_latents(expert, (torch.randn(3, 4),), {}) is None


@pytest.mark.parametrize("spec", ["sea:5.0:3", "fbc:0.5", "taylorseer:2"])
def test_step_caches_skip_forwards_of_an_image_to_video_model(i2v_parts, images, spec):
    """Without its adapter diffusers' SeaCache computes every forward of a 36-channel expert (fail-open)."""
    config = dataclasses.replace(
        load_task_config("i2v-A14B"), sizes=("48*32",), default_size="48*32", frame_num=5, text_len=32
    )
    pipe = WanT2V(config, as_components(copy.deepcopy(i2v_parts)))
    apply_levers(pipe, Levers(cache=spec))
    settings = GenerationSettings(prompt="a fox", seed=1, sample_steps=12, image=str(images["portrait"]))
    with counting_computed(pipe) as computed:
        result = pipe.generate(pipe.plan(settings), progress=False)
    assert torch.isfinite(result.video).all()
    assert 0 < sum(computed.values()) < sum(result.forwards.values())


def test_the_lightning_preset_decodes_in_bfloat16_unless_told_otherwise():
    assert resolve_levers("lightning", {}, CPU)[0].vae_dtype == "bfloat16"
    assert resolve_levers("lightning", {"vae_dtype": "float32"}, CPU)[0].vae_dtype == "float32"
    assert preset_generation_defaults("lightning")["sample_steps"] == 4
