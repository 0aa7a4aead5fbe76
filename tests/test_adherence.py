"""The adherence detector: right on the world's own videos, and on hand-made cases."""

from __future__ import annotations

import random

import pytest
import torch

from evaluation.adherence import adherence, check, detect
from evaluation.tiny_world import Scene, Shape, render_scenes, sample_scene
from wan.video import to_uint8_frames


def _scene(motion: str, *shapes: tuple[str, str, float, float], rate: float = 0.012, size: float = 0.1) -> Scene:
    return Scene(tuple(Shape(c, k, x, y, size) for c, k, x, y in shapes), motion, rate)


def test_detector_is_right_on_held_out_ground_truth_videos():
    rng = random.Random(2024)
    scenes = [sample_scene(rng, "test") for _ in range(200)]
    checks = [check(render_scenes([s], 33)[0], s.text) for s in scenes]
    accuracy = sum(c.matched for c in checks) / len(checks)
    assert accuracy >= 0.98, [(c.prompt, c.detection) for c in checks if not c.matched][:5]


def test_detector_survives_blur_and_noise():
    """Generated videos are softer and noisier than renders; colour and motion must still read."""
    rng = random.Random(5)
    blur = torch.full((3, 1, 1, 5, 5), 1 / 25)
    noise = torch.Generator().manual_seed(0)
    scenes = [sample_scene(rng, "train") for _ in range(30)]
    videos = []
    for scene in scenes:
        video = torch.nn.functional.conv3d(render_scenes([scene], 33)[0][None], blur, padding=(0, 2, 2), groups=3)[0]
        videos.append((video + 0.08 * torch.randn(video.shape, generator=noise)).clamp(-1, 1))
    assert adherence(videos, [s.text for s in scenes]) >= 0.95


@pytest.mark.parametrize(
    ("motion", "x", "y"),
    [("left", 0.7, 0.5), ("right", 0.3, 0.5), ("up", 0.5, 0.7), ("down", 0.5, 0.3), ("growing", 0.5, 0.5)],
)
def test_single_shape_cases(motion, x, y):
    size = 0.06 if motion == "growing" else 0.1
    video = render_scenes(
        [_scene(motion, ("red", "square", x, y), rate=0.028 if motion == "growing" else 0.012, size=size)]
    )[0]
    result = check(video, f"a red square {'moving ' if motion != 'growing' else ''}{motion}")
    assert result.matched, result
    assert result.detection.colours[0] == "red"
    assert result.detection.motion == motion
    wrong_colour = check(video, f"a blue circle {'moving ' if motion != 'growing' else ''}{motion}")
    assert not wrong_colour.colour_ok and wrong_colour.motion_ok and not wrong_colour.matched


def test_shrinking_and_displacement_values():
    video = render_scenes([_scene("shrinking", ("yellow", "circle", 0.5, 0.5), rate=-0.028, size=0.16)])[0]
    detection = detect(video)
    assert detection.motion == "shrinking" and detection.colours == ("yellow",)
    assert detection.area_ratio == pytest.approx(0.166, rel=0.15)  # exp(-0.028 * 32) squared
    left = detect(render_scenes([_scene("left", ("white", "triangle", 0.7, 0.4))])[0])
    assert left.displacement[0] == pytest.approx(-0.012 * 32, abs=0.01) and abs(left.displacement[1]) < 0.01


def test_wrong_motion_and_static_video():
    video = render_scenes([_scene("up", ("green", "circle", 0.5, 0.7))])[0]
    result = check(video, "a green circle moving down")
    assert result.colour_ok and not result.motion_ok
    static = render_scenes([_scene("left", ("green", "circle", 0.5, 0.5), rate=0.0)])[0]
    assert detect(static).motion is None
    assert not check(static, "a green circle moving left").matched


def test_two_shape_captions_need_both_colours_and_the_motion():
    video = render_scenes([_scene("down", ("blue", "circle", 0.3, 0.3), ("purple", "square", 0.7, 0.3))])[0]
    assert check(video, "a blue circle and a purple square moving down").matched
    assert check(video, "a purple triangle and a blue square moving down").matched  # shapes are not checked
    assert not check(video, "a blue circle and a red square moving down").colour_ok
    assert not check(video, "a blue circle and a purple square moving up").motion_ok
    one = render_scenes([_scene("down", ("blue", "circle", 0.3, 0.3))])[0]
    assert not check(one, "a blue circle and a purple square moving down").colour_ok


def test_uint8_frames_read_like_float_video():
    scene = _scene("right", ("white", "square", 0.3, 0.5), ("red", "circle", 0.3, 0.2))
    video = render_scenes([scene])[0]
    from_uint8, from_float = detect(to_uint8_frames(video), 2), detect(video, 2)
    assert (
        (from_uint8.colours, from_uint8.motion)
        == (from_float.colours, from_float.motion)
        == (("white", "red"), "right")
    )
    assert from_uint8.displacement == pytest.approx(from_float.displacement, abs=1e-3)
    assert check(to_uint8_frames(video), scene.text).matched


def test_adherence_is_the_fraction_matched_and_validates_input():
    video = render_scenes([_scene("left", ("red", "square", 0.7, 0.5))])[0]
    assert adherence([video, video], ["a red square moving left", "a red square moving right"]) == 0.5
    with pytest.raises(ValueError):
        adherence([video], [])
    with pytest.raises(ValueError):
        check(video, "a cat walking on grass")
    with pytest.raises(ValueError):
        detect(video[:, :, :, :, None])
