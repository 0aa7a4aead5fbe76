import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from wan.config import HIGH, LOW
from wan.errors import ConfigError
from wan.half_frame import (
    HalfFramePlan,
    Window,
    dit_tokens,
    downsample_renoise,
    frame_counts,
    strided_rope,
    temporal_stride,
    transition,
)
from wan.solvers import make_scheduler

EXPERTS = [HIGH] * 6 + [LOW] * 3


def frames_valued(n: int) -> torch.Tensor:
    """A latent [1, 2, n, 2, 2] whose frame i holds the value i everywhere."""
    return torch.arange(n, dtype=torch.float32).view(1, 1, n, 1, 1).expand(1, 2, n, 2, 2).clone()


@pytest.mark.parametrize(
    ("text", "window"), [("0:4", Window(0, 4)), ("3:", Window(3, None)), (" 2 : 5 ", Window(2, 5))]
)
def test_window_parse(text, window):
    assert Window.parse(text) == window


@pytest.mark.parametrize("text", ["4", "a:b", "4:4", "5:2", "-1:3"])
def test_window_parse_refuses(text):
    with pytest.raises(ConfigError):
        Window.parse(text)


def test_frame_counts_half_inside_the_window_only():
    assert frame_counts(Window(2, 5), EXPERTS, 9) == [9, 9, 5, 5, 5, 9, 9, 9, 9]
    assert frame_counts(Window(0, None), EXPERTS, 9) == [5] * 6 + [9] * 3


@pytest.mark.parametrize(("window", "experts"), [(Window(4, 7), EXPERTS), (Window(0, 2), [HIGH] * 3)])
def test_frame_counts_refuse_low_noise_or_no_switch(window, experts):
    with pytest.raises(ConfigError):
        frame_counts(window, experts, 9)


def test_tokens_of_the_released_schedule():
    """40 steps with CFG, 26 high-noise: the plain window costs 0.71x of 9 frames, 0.69x of 21."""
    experts = [HIGH] * 26 + [LOW] * 14
    for full, ratio in ((9, 0.711), (21, 0.690)):
        counts = HalfFramePlan.build("0:", experts, full).counts
        assert dit_tokens(counts, [2] * 40) / (full * 80) == pytest.approx(ratio, abs=1e-3)


def test_downsample_maps_full_frame_2j_to_half_frame_j():
    x0 = frames_valued(9)
    out = downsample_renoise(x0, torch.zeros(1, 2, 9, 2, 2), sigma=0.25)
    assert out[0, 0, :, 0, 0].tolist() == [0.0, 1.5, 3.0, 4.5, 6.0]  # (1 - 0.25) * [0, 2, 4, 6, 8]


def test_transition_down_at_the_start_takes_the_seed_noise_and_up_completes():
    plan = HalfFramePlan.build("0:2", [HIGH] * 3 + [LOW], 9)
    noise = torch.randn(1, 2, 9, 2, 2)
    scheduler = make_scheduler("unipc", 12.0)
    scheduler.set_timesteps(4)
    gen = torch.Generator().manual_seed(0)
    half = transition(plan, noise, 5, x0=None, sigma=1.0, noise=noise, scheduler=scheduler, generator=gen)
    torch.testing.assert_close(half, noise[:, :, ::2])
    x0 = frames_valued(5)
    full = transition(plan, half, 9, x0=x0, sigma=0.5, noise=noise, scheduler=scheduler, generator=gen)
    # renoise completion: frame 2j is x0 frame j, odd frames average their neighbours, seed noise at 0.5.
    expected = 0.5 * torch.arange(9, dtype=torch.float32).view(1, 1, 9, 1, 1) / 2 + 0.5 * noise
    torch.testing.assert_close(full, expected)


def test_transition_down_later_reuses_x0_and_restarts_the_solver():
    plan = HalfFramePlan.build("1:2", [HIGH] * 3 + [LOW], 9)
    noise = torch.randn(1, 2, 9, 2, 2)
    scheduler = make_scheduler("unipc", 12.0)
    scheduler.set_timesteps(4)
    scheduler.step(torch.randn_like(noise), scheduler.timesteps[0], noise)
    assert scheduler.lower_order_nums == 1
    x0 = frames_valued(9)
    gen = torch.Generator().manual_seed(0)
    half = transition(plan, noise, 5, x0=x0, sigma=0.8, noise=noise, scheduler=scheduler, generator=gen)
    torch.testing.assert_close(half, 0.2 * x0[:, :, ::2] + 0.8 * noise[:, :, ::2])
    assert scheduler.lower_order_nums == 0


def test_strided_rope_picks_every_other_frame():
    rope = WanRotaryPosEmbed(attention_head_dim=12, patch_size=(1, 2, 2), max_seq_len=64)
    long = rope(torch.empty(1, 4, 10, 4, 4))
    picked = strided_rope(long, 5, 2)
    per_frame = long[0].view(1, 10, 4, 1, -1)
    torch.testing.assert_close(picked[0].view(1, 5, 4, 1, -1), per_frame[:, ::2])


def test_temporal_stride_hook_only_while_open():
    class Expert(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rope = WanRotaryPosEmbed(attention_head_dim=12, patch_size=(1, 2, 2), max_seq_len=64)

    expert = Expert()
    x = torch.empty(1, 4, 5, 4, 4)
    plain = expert.rope(x)
    with temporal_stride(expert, 2):
        strided = expert.rope(x)
    torch.testing.assert_close(strided[0], strided_rope(expert.rope(torch.empty(1, 4, 10, 4, 4)), 5, 2)[0])
    assert not torch.equal(strided[0], plain[0])
    torch.testing.assert_close(expert.rope(x)[0], plain[0])
    assert strided[0].shape == plain[0].shape
