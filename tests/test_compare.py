import json
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from tiny_models import save_diffusers_layout

from evaluation.tiny_world import Caption, first_frames, held_out_scenes, is_held_out
from wan.video import to_uint8_frames

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import compare  # noqa: E402

PROMPTS = ["a red square moving left", "a blue circle moving up"]


@pytest.fixture(scope="module")
def common_argv(parts, tmp_path_factory) -> list[str]:
    """The tiny setting every run here shares (checkpoint, prompts, steps, frames, CPU)."""
    root = tmp_path_factory.mktemp("compare")
    ckpt = save_diffusers_layout(parts, root / "ckpt")
    prompts = root / "prompts.txt"
    prompts.write_text(f"{PROMPTS[0]}\n\n{PROMPTS[1]}\n", encoding="utf-8")
    return [
        "--task", "t2v-tiny", "--ckpt_dir", str(ckpt), "--prompt_file", str(prompts), "--prompts", "2",
        "--sample_steps", "8", "--frame_num", "9", "--device", "cpu",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def report(common_argv, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "out"
    modes = "half_repeat,cfg_trunc,half_renoise+cfg_trunc,half@1:3+stride2"
    argv = [*common_argv, "--modes", modes, "--out_dir", str(out)]
    assert compare.main(argv) == 0
    return out, json.loads((out / "report.json").read_text())


def test_baseline_against_itself_is_perfect(report):
    _, data = report
    base = data["modes"]["baseline"]
    assert data["prompts"] == 2
    assert base["mse"] == {"mean": 0.0, "worst": 0.0}
    assert base["psnr"]["worst"] == compare.PSNR_CAP
    assert base["ssim"]["worst"] == pytest.approx(1.0)
    assert base["forwards"] == 16 and base["tokens_vs_baseline"] == 1.0


def test_modes_are_scored_and_counted(report):
    _, data = report
    modes = data["modes"]
    assert list(modes) == ["baseline", "half_repeat", "cfg_trunc", "half_renoise+cfg_trunc", "half@1:3+stride2"]
    # 8 steps at shift 12: 6 high-noise (0-5), 2 low-noise (6-7). Truncation 5/3 makes steps 3-7
    # cond-only (the last 5 steps cover the last 3 high-noise ones): 5 passes fewer.
    assert modes["cfg_trunc"]["forwards"] == 16 - 5
    assert modes["half_repeat"]["forwards"] == 16
    assert all(m["computed"] == m["forwards"] for m in modes.values())  # no cache lever: every forward computes
    # 9 frames -> 3 latent frames; half-frame runs the 6 high-noise steps on 2 of them.
    assert modes["half_repeat"]["tokens_vs_baseline"] == pytest.approx((12 * 2 + 4 * 3) / (16 * 3))
    for m in modes.values():
        assert m["mse"]["worst"] >= m["mse"]["mean"] >= 0 and 0 < m["ssim"]["mean"] <= 1
        assert all(v["adherent"] in (True, False) for v in m["videos"])
    assert modes["half_repeat"]["mse"]["mean"] > 0


def test_pictures_are_written(report):
    out, _ = report
    assert (out / "side_by_side.png").stat().st_size > 0
    assert (out / "side_by_side.mp4").stat().st_size > 0
    assert not list(out.glob(".*tmp*"))


def test_window_mode_runs_its_window_and_motion_is_scored(report):
    _, data = report
    window = data["modes"]["half@1:3+stride2"]
    assert window["settings"] == {"half_frame": True, "half_frame_steps": "1:3", "half_frame_positions": "stride2"}
    assert window["tokens_vs_baseline"] == pytest.approx((2 * 2 + 6 * 3) / (8 * 3))
    assert data["modes"]["baseline"]["motion_error"] in (0.0, None)
    assert all("amplitude" in row for row in window["videos"])


@pytest.mark.parametrize(
    ("mode", "fields"),
    [
        ("half_default", {"half_frame": True}),
        ("half@0:", {"half_frame": True, "half_frame_steps": "0:"}),
        ("half@4:22+repeat+cfg_trunc", {"half_frame": True, "half_frame_steps": "4:22", "frame_completion": "repeat",
                                        **compare.CFG_TRUNCATION}),
        ("cfg_trunc@14:3", {"cfg_truncate_steps": 14, "cfg_truncate_high_noise_steps": 3}),
    ],
)  # fmt: skip
def test_mode_fields(mode, fields):
    assert compare.mode_fields(mode) == fields


@pytest.mark.parametrize("mode", ["warp_speed", "half@4", "half@1:3+fast", "cfg_trunc@5"])
def test_unknown_mode_is_refused(mode):
    with pytest.raises(compare.ConfigError, match="unknown"):
        compare.parse_modes(mode)


def test_unknown_mode_is_refused_by_main():
    with pytest.raises(compare.ConfigError, match="unknown mode"):
        compare.main(["--modes", "warp_speed"])


def test_workers_merge_to_the_single_process_report(report, common_argv, tmp_path):
    # Two worker processes, one prompt each; one mode besides the baseline keeps the test short.
    out = tmp_path / "out"
    assert compare.main([*common_argv, "--modes", "half_repeat", "--workers", "2", "--out_dir", str(out)]) == 0
    merged = json.loads((out / "report.json").read_text())
    _, single = report
    assert merged["prompts"] == 2 and list(merged["modes"]) == ["baseline", "half_repeat"]
    exact, scores = ("prompt", "seed", "forwards", "tokens", "adherent"), ("mse", "psnr", "ssim")
    for mode, m in merged["modes"].items():
        assert [v["prompt"] for v in m["videos"]] == PROMPTS and [v["seed"] for v in m["videos"]] == [0, 1]
        for got, want in zip(m["videos"], single["modes"][mode]["videos"], strict=True):
            assert {k: got[k] for k in exact} == {k: want[k] for k in exact}
            # Same frames; the float64 scores' reductions may round differently with 1 thread than with 2.
            assert {k: got[k] for k in scores} == pytest.approx({k: want[k] for k in scores}, rel=1e-12)
    for k in (0, 1):
        assert json.loads((out / "shards" / str(k) / "report.json").read_text())["prompts"] == 1
        assert (out / "shards" / str(k) / "log.txt").stat().st_size > 0
    assert (out / "side_by_side.png").stat().st_size > 0 and (out / "side_by_side.mp4").stat().st_size > 0


def test_failed_shard_is_named_with_its_log(common_argv, tmp_path, monkeypatch):
    fail = tmp_path / "fail.sh"
    fail.write_text("#!/bin/sh\necho boom\nexit 3\n")
    fail.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fail))  # each worker "crashes" at once
    out = tmp_path / "out"
    with pytest.raises(compare.ShardError, match=r"shard 0/2 exited with code 3; see .*shards/0/log.txt"):
        compare.main([*common_argv, "--workers", "2", "--out_dir", str(out)])
    assert (out / "shards" / "1" / "log.txt").read_text() == "boom\n"


@pytest.mark.parametrize("flags", [["--workers", "0"], ["--shard", "2/2"], ["--shard", "1of2"]])
def test_bad_workers_or_shard_is_refused(flags):
    with pytest.raises(compare.ConfigError, match="--workers|--shard"):
        compare.main(flags)


def test_image_mode_on_i2v_tiny(tmp_path):
    """A held-out scene's first frame reaches the engine as the image; frame 0 is scored against it."""
    out = tmp_path / "out"
    argv = [
        "--task", "i2v-tiny", "--prompts", "1", "--sample_steps", "6", "--frame_num", "5", "--device", "cpu",
        "--modes", "preset_fast", "--out_dir", str(out),
    ]  # fmt: skip
    assert compare.main(argv) == 0
    data = json.loads((out / "report.json").read_text())
    scene = held_out_scenes(1)[0]
    image = out / "images" / "000.png"
    assert np.array_equal(iio.imread(image), to_uint8_frames(first_frames([scene]).transpose(0, 1))[0])
    assert list(data["modes"]) == ["baseline", "preset_fast"]
    for mode in data["modes"].values():
        (row,) = mode["videos"]
        assert row["prompt"] == scene.text and is_held_out(Caption.parse(row["prompt"]))
        assert row["image"] == str(image) and row["adherent"] in (True, False)
        assert mode["frame0_psnr"]["mean"] == row["frame0_psnr"] and "amplitude" in row
    # the image conditions the video: frame 0 stays near it even after 6 steps
    assert data["modes"]["baseline"]["frame0_psnr"]["mean"] > 18
    assert "f0 PSNR" in compare.format_table(data)


def test_i2v_prompts_come_only_with_their_images(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\n", encoding="utf-8")
    with pytest.raises(compare.ConfigError, match="needs an image per prompt"):
        compare.main(["--task", "i2v-tiny", "--prompt_file", str(prompts), "--out_dir", str(tmp_path / "out")])


def test_scene_seed_draws_a_tuning_set_apart_from_the_held_out_scenes():
    """``--scene_seed`` picks other scenes (each with its own image), so settings are not tuned on the check's."""
    config = compare.load_task_config("i2v-tiny")
    held_out = compare.load_prompts(compare.parse_args(["--task", "i2v-tiny", "--prompts", "4"]), config)
    tuning = compare.load_prompts(compare.parse_args(["--prompts", "4", "--scene_seed", "1"]), config)
    assert [p.text for p in held_out] == [s.text for s in held_out_scenes(4)]
    assert [p.text for p in tuning] == [s.text for s in held_out_scenes(4, seed=1)]
    assert not any(np.array_equal(a.image, b.image) for a in held_out for b in tuning)
