"""The synthetic world: captions say what is rendered, held-out combos stay out of training."""

from __future__ import annotations

import random

import pytest
import torch

from evaluation.tiny_world import (
    BACKGROUND,
    COLOURS,
    HELD_OUT,
    MAX_FRAMES,
    MOTIONS,
    SHAPES,
    TRANSLATIONS,
    Caption,
    Scene,
    Shape,
    all_captions,
    first_frames,
    held_out_prompts,
    held_out_scenes,
    is_held_out,
    render_scenes,
    sample_scene,
)


def _coverage(video: torch.Tensor, colour: str) -> torch.Tensor:
    """Ground truth without the detector: per pixel [F, H, W], how much of ``colour`` lies over the
    background (1 inside, fractional on anti-aliased edges, 0 elsewhere)."""
    background = torch.tensor(BACKGROUND).view(3, 1, 1, 1) * 2 - 1
    direction = torch.tensor(COLOURS[colour]).view(3, 1, 1, 1) * 2 - 1 - background
    offset = video - background
    alpha = (offset * direction).sum(dim=0) / direction.pow(2).sum()
    residual = (offset - alpha * direction).norm(dim=0)
    return torch.where((residual < 0.05) & (alpha > 0.02), alpha.clamp(0, 1), 0.0)


def _track(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per frame: area, centroid x, centroid y (pixels) of a coverage map [F, H, W]."""
    weight = weight.double()
    area = weight.sum(dim=(1, 2))
    ys = torch.arange(weight.shape[1], dtype=torch.float64).view(1, -1, 1)
    xs = torch.arange(weight.shape[2], dtype=torch.float64).view(1, 1, -1)
    return area, (weight * xs).sum(dim=(1, 2)) / area, (weight * ys).sum(dim=(1, 2)) / area


def test_caption_text_round_trips_for_every_template_caption():
    captions = all_captions()
    assert len(captions) == len(set(captions)) == len(COLOURS) * len(SHAPES) * len(MOTIONS) * (1 + 5 * 3)
    for text in captions:
        assert Caption.parse(text).text == text
    assert Caption.parse("  A Red   Square moving LEFT ").text == "a red square moving left"
    assert Caption.parse("a blue circle and a white triangle growing").colours == ("blue", "white")


@pytest.mark.parametrize(
    "text", ["a red square", "a pink square moving left", "a red cube growing", "red square moving up", "moving up"]
)
def test_caption_parse_refuses_text_outside_the_template(text):
    with pytest.raises(ValueError):
        Caption.parse(text)


def test_scenes_are_deterministic_from_the_rng():
    a = [sample_scene(random.Random(7)) for _ in range(3)]
    b = [sample_scene(random.Random(7)) for _ in range(3)]
    assert a == b
    assert torch.equal(render_scenes([a[0]], 9, 32, 32)[0], render_scenes([b[0]], 9, 32, 32)[0])


def test_held_out_combos_never_in_train_and_always_in_test():
    rng = random.Random(0)
    train = [sample_scene(rng, "train") for _ in range(5000)]
    assert not any(is_held_out(s.caption) for s in train)
    seen = {combo for s in train for combo in s.caption.combos}
    # every word of the vocabulary is trained, and every non-held-out combo occurs
    assert {c for c, _, _ in seen} == set(COLOURS)
    assert {s for _, s, _ in seen} == set(SHAPES)
    assert {m for _, _, m in seen} == set(MOTIONS)
    assert len(seen) == len(COLOURS) * len(SHAPES) * len(MOTIONS) - len(HELD_OUT)
    test = [sample_scene(rng, "test") for _ in range(500)]
    assert all(is_held_out(s.caption) for s in test)
    with pytest.raises(ValueError):
        sample_scene(rng, "validation")


def test_held_out_scenes_are_test_scenes_fixed_by_the_seed():
    """i2v-tiny's evaluation scenes: a longer list starts with a shorter one, so 16 and 32 prompts share 16."""
    scenes = held_out_scenes(8)
    assert scenes[:4] == held_out_scenes(4) and scenes != held_out_scenes(8, seed=1)
    assert all(is_held_out(s.caption) for s in scenes)
    frames = first_frames(scenes[:2], 32, 48)
    assert frames.shape == (2, 3, 32, 48) and torch.equal(frames, render_scenes(scenes[:2], 3, 32, 48)[:, :, 0])


def test_held_out_prompts():
    prompts = held_out_prompts(64, seed=3)
    assert len(prompts) == 64
    assert prompts == held_out_prompts(64, seed=3)
    assert {len(p.colours) for p in prompts} == {1, 2}
    assert {p.text for p in prompts if len(p.colours) == 1} == {Caption(((c, s),), m).text for c, s, m in HELD_OUT}
    for p in prompts:
        caption = Caption.parse(p.text)
        assert is_held_out(caption)
        assert (caption.colours, caption.motion) == (p.colours, p.motion)


@pytest.mark.parametrize("frames", [17, 33])
def test_rendered_motion_agrees_with_the_caption(frames):
    """For many random scenes, each shape's exact-colour pixels move/scale as the caption says."""
    rng = random.Random(frames)
    for _ in range(40):
        scene = sample_scene(rng, "train" if rng.random() < 0.5 else "test")
        video = render_scenes([scene], frames, 64, 64)[0]
        assert video.shape == (3, frames, 64, 64)
        assert video.min() >= -1 and video.max() <= 1
        masks = [_coverage(video, shape.colour) for shape in scene.shapes]
        if len(masks) == 2:
            assert len({s.colour for s in scene.shapes}) == 2
            assert not ((masks[0] > 0.5) & (masks[1] > 0.5)).any()
        for mask in masks:
            area, cx, cy = _track(mask)
            assert (area > 0).all()
            if scene.motion in TRANSLATIONS:
                dx, dy = TRANSLATIONS[scene.motion]
                travel = (cx[-1] - cx[0]) * dx + (cy[-1] - cy[0]) * dy
                across = (cx[-1] - cx[0]) * dy + (cy[-1] - cy[0]) * dx
                assert travel > 0.25 * 64 * (frames - 1) / (MAX_FRAMES - 1), scene
                assert abs(across) < 1.0
                assert abs(area[-1] / area[0] - 1) < 0.05  # stays in frame: not clipped
            else:
                ratio = float(area[-1] / area[0])
                assert (ratio > 1.8) if scene.motion == "growing" else (ratio < 1 / 1.8), scene
                assert abs(cx[-1] - cx[0]) < 1.0 and abs(cy[-1] - cy[0]) < 1.0


def test_shapes_stay_inside_the_frame_for_max_frames():
    rng = random.Random(11)
    background = torch.tensor(BACKGROUND).view(3, 1, 1) * 2 - 1
    for _ in range(40):
        video = render_scenes([sample_scene(rng)], MAX_FRAMES, 64, 64)[0]
        border = torch.cat([video[:, :, 0], video[:, :, -1], video[:, :, :, 0], video[:, :, :, -1]], dim=2)
        assert torch.allclose(border, background.expand_as(border), atol=1e-6)


def test_render_draws_the_shape_at_its_position_and_size():
    scene = Scene((Shape("green", "square", x=0.5, y=0.25, size=0.125),), "right", rate=0.01)
    video = render_scenes([scene], 2, 64, 64)[0]
    area, cx, cy = _track(_coverage(video, "green"))
    assert float(area[0]) == pytest.approx(16 * 16, abs=1)
    assert float(cx[0]) == pytest.approx(31.5, abs=0.1) and float(cy[0]) == pytest.approx(15.5, abs=0.1)
    assert float(cx[1] - cx[0]) == pytest.approx(0.64, abs=0.2)


def test_batch_render_equals_one_scene_at_a_time():
    """A batch mixing one- and two-shape scenes renders each scene as it renders alone."""
    rng = random.Random(11)
    scenes = [sample_scene(rng, split) for split in ("train", "test") * 6]
    assert {len(s.shapes) for s in scenes} == {1, 2}
    batch = render_scenes(scenes, 9, 40, 56)
    assert batch.shape == (len(scenes), 3, 9, 40, 56)
    for scene, clip in zip(scenes, batch, strict=True):
        assert torch.equal(clip, render_scenes([scene], 9, 40, 56)[0])
