import math

import numpy as np
import pytest

from evaluation.motion import motion_scores, summarise_motion, tracks, video_amplitude, world_range
from evaluation.tiny_world import MAX_FRAMES, Scene, Shape, render_scenes
from wan.video import to_uint8_frames

SPAN = MAX_FRAMES - 1


def moving(motion: str, rate: float, shapes=(("red", "square", 0.3, 0.5, 0.1),)) -> Scene:
    return Scene(tuple(Shape(c, k, x, y, s) for c, k, x, y, s in shapes), motion, rate)


@pytest.mark.parametrize(("motion", "x"), [("right", 0.2), ("left", 0.8), ("down", 0.5), ("up", 0.5)])
def test_known_travel_is_recovered(motion, x):
    y = {"down": 0.2, "up": 0.8}.get(motion, 0.5)
    scene = moving(motion, 0.012, (("red", "square", x, y, 0.08),))
    assert video_amplitude(render_scenes([scene])[0], scene.text) == pytest.approx(0.012 * SPAN, abs=0.005)


@pytest.mark.parametrize(("motion", "size", "rate"), [("growing", 0.06, 0.028), ("shrinking", 0.18, -0.028)])
def test_known_growth_is_recovered(motion, size, rate):
    scene = moving(motion, rate, (("blue", "circle", 0.5, 0.5, size),))
    assert video_amplitude(render_scenes([scene])[0], scene.text) == pytest.approx(abs(rate) * SPAN, rel=0.05)


def test_half_the_travel_reads_as_half_and_wrong_way_as_negative():
    full, half = moving("right", 0.012), moving("right", 0.006)
    base = video_amplitude(render_scenes([full])[0], full.text)
    scores = motion_scores(render_scenes([half])[0], half.text, base)
    assert scores["amplitude_vs_baseline"] == pytest.approx(0.5, abs=0.03)
    wrong = moving("left", 0.012, (("red", "square", 0.7, 0.5, 0.1),))
    assert video_amplitude(render_scenes([wrong])[0], full.text) < -0.3


def test_two_shapes_are_tracked_apart_and_uint8_frames_agree():
    scene = moving("up", 0.01, (("green", "circle", 0.25, 0.8, 0.08), ("white", "triangle", 0.75, 0.8, 0.08)))
    video = render_scenes([scene])[0]
    green, white = tracks(video, ("green", "white"))
    assert green.centroid[0, 0] == pytest.approx(0.25, abs=0.01)
    assert white.centroid[0, 0] == pytest.approx(0.75, abs=0.01)
    assert video_amplitude(to_uint8_frames(video), scene.text) == pytest.approx(0.01 * SPAN, abs=0.005)


def test_missing_colour_counts_as_no_motion():
    scene = moving("right", 0.012)
    assert video_amplitude(render_scenes([scene])[0], "a purple square moving right") == 0.0


def test_still_baseline_gives_no_ratio_and_summary_skips_it():
    scene = moving("right", 0.012)
    assert motion_scores(render_scenes([scene])[0], scene.text, 0.001)["amplitude_vs_baseline"] is None
    rows = [{"amplitude_vs_baseline": 0.8}, {"amplitude_vs_baseline": 1.1}, {"amplitude_vs_baseline": None}]
    assert summarise_motion(rows) == pytest.approx({"amplitude_vs_baseline": 0.95, "motion_error": 0.15})
    assert summarise_motion([{"amplitude_vs_baseline": None}]) == {"amplitude_vs_baseline": None, "motion_error": None}


def test_world_range_scales_with_clip_length():
    assert world_range("left", MAX_FRAMES) == (0.30, 0.45)
    low, high = world_range("growing", 17)
    assert (low, high) == pytest.approx((math.log(2.0) / 2, math.log(2.6) / 2))
    scene = moving("right", 0.375 / SPAN)
    inside = motion_scores(render_scenes([scene])[0], scene.text, None)["amplitude_in_world_range"]
    assert inside == pytest.approx(0.5, abs=0.05)
    assert np.isfinite(inside)
