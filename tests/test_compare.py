import json
import sys
from pathlib import Path

import pytest
from tiny_models import save_diffusers_layout

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import compare  # noqa: E402


@pytest.fixture(scope="module")
def report(parts, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    ckpt = save_diffusers_layout(parts, root / "ckpt")
    prompts = root / "prompts.txt"
    prompts.write_text("a red square moving left\n\na blue circle moving up\n", encoding="utf-8")
    out = root / "out"
    argv = [
        "--task", "t2v-tiny", "--ckpt_dir", str(ckpt), "--prompt_file", str(prompts), "--prompts", "2",
        "--modes", "half_repeat,cfg_trunc,half_renoise+cfg_trunc", "--sample_steps", "8", "--frame_num", "9",
        "--device", "cpu", "--out_dir", str(out),
    ]  # fmt: skip
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
    assert list(modes) == ["baseline", "half_repeat", "cfg_trunc", "half_renoise+cfg_trunc"]
    # 8 steps at shift 12: 6 high-noise (0-5), 2 low-noise (6-7). Truncation 5/3 makes steps 3-7
    # cond-only (the last 5 steps cover the last 3 high-noise ones): 5 passes fewer.
    assert modes["cfg_trunc"]["forwards"] == 16 - 5
    assert modes["half_repeat"]["forwards"] == 16
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


def test_unknown_mode_is_refused():
    with pytest.raises(compare.ConfigError, match="unknown mode"):
        compare.main(["--modes", "warp_speed"])
