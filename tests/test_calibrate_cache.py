"""scripts/calibrate_cache.py on the tiny random checkpoint: picks per expert, writes what --cache reads."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import calibrate_cache  # noqa: E402

from wan.errors import ConfigError  # noqa: E402
from wan.levers.cache import CALIBRATION_FILE, CacheSpec, cache_settings, expert_settings, read_calibration  # noqa: E402


def run(ckpt, task_file, tmp_path, *extra):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square moving left\na blue circle moving right\n")
    out = tmp_path / "calibration.json"
    argv = ["--task", str(task_file), "--ckpt_dir", str(ckpt), "--prompt_file", str(prompts), "--prompts", "2"]
    argv += ["--sample_steps", "6", "--device", "cpu", "--out", str(out), *extra]
    return calibrate_cache.main(argv), out


def test_keeps_the_most_skipping_setting_above_the_bound(ckpt, task_file, tmp_path):
    code, out = run(ckpt, task_file, tmp_path, "--candidates", "0.001,0.9", "--min_psnr", "0")
    assert code == 0
    written = json.loads(out.read_text())
    assert written["fbc"] == {"high_noise": 0.9, "low_noise": 0.9}  # any PSNR passes: the skippier one wins
    trials = written["_measured"]["fbc"]["trials"]
    assert len(trials) == 4 and all(0 <= t["skipped"] <= 1 for t in trials)
    assert written["_measured"]["fbc"]["skipped"] > 0
    # what --cache fbc then uses
    calibration = read_calibration(tmp_path) if out.name == "cache_calibration.json" else written
    assert expert_settings(CacheSpec("fbc"), "low_noise", calibration) == 0.9


def test_no_setting_meets_the_bound_is_one_clear_error(ckpt, task_file, tmp_path):
    with pytest.raises(ConfigError, match="no fbc setting keeps 200.0 dB for the high_noise expert"):
        run(ckpt, task_file, tmp_path, "--candidates", "0.9", "--min_psnr", "200")


def test_sea_calibration_records_its_run_and_cache_sea_uses_both(ckpt, task_file, tmp_path):
    out = tmp_path / CALIBRATION_FILE
    extra = ["--method", "sea", "--candidates", "0.001,5", "--min_psnr", "0", "--max_run", "2+4", "--out", str(out)]
    code, _ = run(ckpt, task_file, tmp_path, *extra)
    assert code == 0
    written = json.loads(out.read_text())["sea"]
    assert written["high_noise"] == 5.0 and written["max_run"] == "2+4"  # the skippier threshold, and the runs
    experts = ("high_noise", "low_noise")
    assert cache_settings("sea", tmp_path, experts) == {"method": "sea", **written}


def test_a_sea_run_out_of_range_is_one_clear_error(ckpt, task_file, tmp_path):
    with pytest.raises(ConfigError, match="--max_run 0: the sea run must be a whole number from 1 to 8"):
        run(ckpt, task_file, tmp_path, "--method", "sea", "--max_run", "0")
