import pytest
import torch

from wan.errors import ConfigError
from wan.frames import (
    complete_frames,
    complete_interpolate,
    complete_repeat,
    half_frame_count,
    half_frame_indices,
    latent_frame_count,
    predict_x0,
    renoise,
    repeat_indices,
)


def frames_valued(n: int) -> torch.Tensor:
    """A latent [1, 2, n, 2, 2] whose frame i holds the value i everywhere."""
    return torch.arange(n, dtype=torch.float32).view(1, 1, n, 1, 1).expand(1, 2, n, 2, 2).clone()


def frame_values(x: torch.Tensor) -> list[float]:
    assert (x == x[:, :1, :, :1, :1]).all(), "a frame is not constant"
    return x[0, 0, :, 0, 0].tolist()


@pytest.mark.parametrize(("frame_num", "latent"), [(81, 21), (33, 9), (17, 5), (5, 2), (1, 1), (49, 13)])
def test_latent_frame_count(frame_num, latent):
    assert latent_frame_count(frame_num) == latent


@pytest.mark.parametrize("frame_num", [80, 0, 2, 48, -3])
def test_latent_frame_count_refuses_non_4n_plus_1(frame_num):
    with pytest.raises(ConfigError, match="4n\\+1"):
        latent_frame_count(frame_num)


@pytest.mark.parametrize(("full", "half"), [(21, 11), (20, 10), (9, 5), (2, 1), (1, 1)])
def test_half_counts_and_kept_indices(full, half):
    assert half_frame_count(full) == half
    assert half_frame_indices(full) == list(range(0, full, 2))
    assert len(half_frame_indices(full)) == half


def test_repeat_pattern_odd_full_count_keeps_last_once():
    out = complete_repeat(frames_valued(11), 21)
    assert out.shape == (1, 2, 21, 2, 2)
    assert frame_values(out) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10]
    assert out.is_contiguous()


def test_repeat_pattern_even_full_count_is_exact():
    out = complete_repeat(frames_valued(5), 10)
    assert frame_values(out) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert repeat_indices(4) == [0, 0, 1, 1]


def test_interpolate_odd_and_even():
    assert frame_values(complete_interpolate(frames_valued(3), 5)) == [0, 0.5, 1, 1.5, 2]
    assert frame_values(complete_interpolate(frames_valued(3), 6)) == [0, 0.5, 1, 1.5, 2, 2]


def test_completion_refuses_wrong_half_count():
    with pytest.raises(ValueError, match="half latent has 4 frames"):
        complete_repeat(frames_valued(4), 21)


def test_flow_x0_prediction_inverts_the_flow_path():
    torch.manual_seed(0)
    x0, eps = torch.randn(1, 2, 3, 4, 4), torch.randn(1, 2, 3, 4, 4)
    sigma = 0.8
    x_t = renoise(x0, eps, sigma)
    torch.testing.assert_close(predict_x0(x_t, eps - x0, sigma), x0)


def test_renoise_completion_interpolates_x0_and_uses_given_noise():
    x0 = frames_valued(3)
    noise = torch.randn(1, 2, 5, 2, 2)
    out = complete_frames("renoise", torch.zeros_like(x0), 5, x0=x0, switch_sigma=0.75, noise=noise)
    torch.testing.assert_close(out, 0.25 * complete_interpolate(x0, 5) + 0.75 * noise)


def test_methods_differ_and_unknown_is_refused():
    half = torch.randn(1, 2, 3, 2, 2)
    assert not torch.equal(complete_frames("repeat", half, 5), complete_frames("interpolate", half, 5))
    with pytest.raises(ConfigError, match="unknown frame completion"):
        complete_frames("magic", half, 5)
    with pytest.raises(ValueError, match="needs x0"):
        complete_frames("renoise", half, 5)
