import dataclasses

import pytest
import torch
from tiny_models import CAPTIONS, as_components, wan_pipeline

from wan.config import HIGH, LOW
from wan.errors import ConfigError, NonFiniteLatentError
from wan.settings import GenerationSettings
from wan.text2video import WanT2V

PROMPT = "a red square moving left"


@pytest.fixture(scope="module")
def pipe(parts, test_config):
    components = as_components(parts)
    return WanT2V(test_config, components)


def record_frames(pipe):
    """Forward hooks that record the latent frame count each expert receives."""
    seen = {HIGH: [], LOW: []}
    handles = [
        expert.register_forward_pre_hook(
            lambda _m, _a, kw, name=name: seen[name].append(kw["hidden_states"].shape[2]), with_kwargs=True
        )
        for name, expert in pipe.experts.items()
    ]
    return seen, handles


def run(pipe, **kw):
    return pipe.generate(GenerationSettings(prompt=PROMPT, seed=7, **kw), progress=False)


def test_matches_diffusers_wan_pipeline(pipe, parts, test_config):
    """Independent oracle for router, CFG and sampler: diffusers' WanPipeline on the same weights."""
    oracle = wan_pipeline(parts)
    expected = oracle(
        prompt=PROMPT,
        negative_prompt="ugly, static",
        height=32,
        width=48,
        num_frames=17,
        num_inference_steps=12,
        guidance_scale=4.0,
        guidance_scale_2=3.0,
        generator=torch.Generator("cpu").manual_seed(7),
        max_sequence_length=test_config.text_len,
        output_type="pt",
    ).frames[0]  # [F, C, H, W] in [0, 1]
    ours = run(pipe, negative_prompt="ugly, static", size="48*32")
    assert ours.high_noise_steps > 0 and ours.low_noise_steps > 0
    got = (ours.video / 2 + 0.5).clamp(0, 1).permute(1, 0, 2, 3)
    assert got.shape == expected.shape == (17, 3, 32, 48)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_same_seed_same_video_bitwise(pipe):
    a, b = run(pipe), run(pipe)
    assert torch.equal(a.video, b.video) and torch.equal(a.latents, b.latents)
    assert not torch.equal(a.video, pipe.generate(GenerationSettings(prompt=PROMPT, seed=8), progress=False).video)


@pytest.mark.parametrize(("frame_num", "full", "half"), [(17, 5, 3), (13, 4, 2)])
@pytest.mark.parametrize("method", ["repeat", "interpolate", "renoise", "renoise_fresh"])
def test_half_frame_experts_see_half_then_full_frames(pipe, frame_num, full, half, method):
    seen, handles = record_frames(pipe)
    try:
        result = run(pipe, frame_num=frame_num, half_frame=True, half_frame_steps="0:", frame_completion=method)
    finally:
        for h in handles:
            h.remove()
    assert seen[HIGH] == [half] * (2 * result.high_noise_steps)
    assert seen[LOW] == [full] * (2 * result.low_noise_steps)
    assert result.latents.shape[2] == full
    assert result.video.shape == (3, frame_num, 32, 32)
    assert result.tokens[HIGH] == 2 * result.high_noise_steps * half * 4
    assert "completion" in result.timings


@pytest.mark.parametrize("positions", ["contiguous", "stride2"])
def test_half_frame_window_runs_full_half_full(pipe, positions):
    seen, handles = record_frames(pipe)
    try:
        result = run(pipe, half_frame=True, half_frame_steps="1:3", half_frame_positions=positions)
    finally:
        for h in handles:
            h.remove()
    high = [5, 3, 3] + [5] * (result.high_noise_steps - 3)
    assert seen[HIGH] == [n for n in high for _ in range(2)]
    assert seen[LOW] == [5] * (2 * result.low_noise_steps)
    assert result.tokens[HIGH] == 2 * sum(high) * 4
    assert result.settings.half_frame_steps == "1:3"


def test_stride2_positions_change_the_video_and_default_window_is_recorded(pipe):
    plain = run(pipe, half_frame=True)
    assert plain.settings.half_frame_steps == "0:"  # the flag alone: every high-noise step at half frames
    strided = run(pipe, half_frame=True, half_frame_positions="stride2")
    assert not torch.equal(plain.video, strided.video)


def test_completion_methods_give_different_videos(pipe):
    videos = {
        m: run(pipe, half_frame=True, half_frame_steps="0:", frame_completion=m).video
        for m in ("repeat", "interpolate", "renoise")
    }
    assert not torch.equal(videos["repeat"], videos["interpolate"])
    assert not torch.equal(videos["repeat"], videos["renoise"])


def test_released_split_is_26_high_then_14_low(pipe):
    seen, handles = record_frames(pipe)
    try:
        result = run(pipe, frame_num=5, sample_steps=40)
    finally:
        for h in handles:
            h.remove()
    assert (result.high_noise_steps, result.low_noise_steps) == (26, 14)
    assert len(seen[HIGH]) == 52 and len(seen[LOW]) == 28


def test_cfg_truncation_saves_exactly_the_skipped_passes(pipe):
    base = run(pipe, sample_steps=40, frame_num=5)
    cut = run(pipe, sample_steps=40, frame_num=5, cfg_truncate_steps=5, cfg_truncate_high_noise_steps=3)
    assert base.forwards == {HIGH: 52, LOW: 28}
    assert cut.forwards == {HIGH: 52 - 3, LOW: 28 - 5}
    assert not torch.equal(base.video, cut.video)


def test_single_guide_scale_applies_to_both_experts(pipe):
    a = run(pipe, guide_scale_high=3.0, guide_scale_low=3.0)
    b = run(pipe, guide_scale_high=4.0, guide_scale_low=3.0)
    assert not torch.equal(a.video, b.video)


def test_nan_is_reported_with_step_and_expert(pipe):
    expert = pipe.experts[LOW]
    handle = expert.register_forward_hook(lambda _m, _a, out: (out[0] * float("nan"),))
    try:
        with pytest.raises(NonFiniteLatentError, match=r"at step \d+ \(low_noise expert\)") as info:
            run(pipe)
    finally:
        handle.remove()
    first_low_step = run(pipe).high_noise_steps
    assert (info.value.step, info.value.expert) == (first_low_step, LOW)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"size": "64*64"}, "--size '64\\*64': task t2v-tiny takes"),
        ({"frame_num": 16}, "4n\\+1"),
        ({"sample_steps": 0}, "--sample_steps 0: must be an integer >= 1"),
        ({"frame_completion": "magic"}, "--frame_completion 'magic': choose one of"),
        ({"half_frame": True, "half_frame_steps": "4"}, "START:END"),
        ({"half_frame": True, "half_frame_steps": "0:30"}, "within the"),
        ({"half_frame": True, "half_frame_positions": "middle"}, "--half_frame_positions 'middle': choose one of"),
    ],
)
def test_bad_settings_are_refused(pipe, kw, message):
    with pytest.raises(ConfigError, match=message):
        run(pipe, **kw)


def test_size_not_divisible_by_patch_is_refused(parts, test_config, pipe):
    """The checkpoint's patch size counts, even where the task config says another."""
    odd = WanT2V(dataclasses.replace(test_config, sizes=("40*32",), patch_size=(1, 1, 1)), pipe.components)
    with pytest.raises(ConfigError, match="multiples of 16 wide"):
        run(odd, size="40*32")


def test_a_prompt_longer_than_the_text_window_is_cut_with_a_warning(pipe, caplog):
    long = " ".join(CAPTIONS * 4)  # far more than text_len (32) tokens
    with caplog.at_level("WARNING", logger="wan.text2video"):
        pipe.encode_text([PROMPT])
        assert not caplog.records
        pipe.encode_text([long])
    (record,) = caplog.records
    assert "longer than the text encoder's window of 32: it is cut to the first 32" in record.getMessage()
