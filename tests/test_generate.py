"""generate.py, one video: outputs and sidecar on a tiny checkpoint; every bad input is exit 2, one line, no file."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import pytest

import generate
import wan.video
from wan import engine, guidance
from wan.config import load_task_config
from wan.outputs import default_video_path, sidecar_path
from wan.paths import claim_output
from wan.plan import build_plan
from wan.settings import GenerationSettings
from wan.video import read_video

REPO = Path(__file__).resolve().parent.parent
PROMPT = "a red square moving left"


@pytest.fixture
def common(task_file) -> list[str]:
    return ["--task", str(task_file), "--device", "cpu", "--quiet", "--prompt", PROMPT]


@pytest.fixture
def base(common, ckpt) -> list[str]:
    return [*common, "--ckpt_dir", str(ckpt)]


@pytest.mark.parametrize("half", [False, True])
def test_writes_mp4_and_sidecar(base, tmp_path, capsys, half):
    video = tmp_path / "a.mp4"
    flags = ["--enable_half_frame_generation"] if half else []
    assert generate.main([*base, "--save_file", str(video), "--base_seed", "5", "--size", "48*32", *flags]) == 0
    assert capsys.readouterr().out == f"{video}\n"
    assert read_video(video).shape == (5, 32, 48, 3)
    meta = json.loads(sidecar_path(video).read_text())  # a.mp4.json
    assert meta["task"] == "t2v-test" and meta["save_file"] == str(video)
    s = meta["settings"]
    assert (s["prompt"], s["seed"], s["size"], s["frame_num"], s["sample_steps"]) == (PROMPT, 5, "48*32", 5, 3)
    assert s["half_frame"] is half and meta["steps"] == {"high_noise": 2, "low_noise": 1}
    stages = {"load", "text_encoding", "high_noise", "low_noise", "vae_decode"} | ({"completion"} if half else set())
    assert set(meta["seconds"]) == stages and all(v >= 0 for v in meta["seconds"].values())
    assert meta["options"]["device"] == "cpu"


def test_sidecar_records_each_experts_cache_setting(base, tmp_path):
    video = tmp_path / "c.mp4"
    assert generate.main([*base, "--save_file", str(video), "--cache", "taylorseer:2"]) == 0
    meta = json.loads(sidecar_path(video).read_text())
    options = meta["options"]
    assert set(meta["computed_forwards"]) == {"high_noise", "low_noise"}  # what the cache ran (few steps here: all)
    assert 0 < sum(meta["computed_forwards"].values()) <= sum(meta["forwards"].values())
    assert options["levers"]["cache"] == "taylorseer:2"
    assert options["cache_settings"] == {"method": "taylorseer", "order": 1, "high_noise": 2.0, "low_noise": 2.0}


def test_fused_kernel_flags_keep_the_video_off_a_gpu(base, tmp_path):
    plain, fused = tmp_path / "p.mp4", tmp_path / "f.mp4"
    assert generate.main([*base, "--base_seed", "5", "--save_file", str(plain)]) == 0
    assert generate.main([*base, "--base_seed", "5", "--save_file", str(fused), "--fuse_norm_rope", "--fuse_gelu"]) == 0
    levers = json.loads(sidecar_path(fused).read_text())["options"]["levers"]
    assert levers["fuse_norm_rope"] and levers["fuse_gelu"]
    assert (read_video(fused) == read_video(plain)).all()  # the CPU runs diffusers' formulas: the same video


def test_default_name_in_save_dir(base, tmp_path):
    assert generate.main([*base, "--save_dir", str(tmp_path / "d")]) == 0
    (video,) = (tmp_path / "d").glob("*.mp4")
    assert video.name.startswith("t2v-test_32x32_a_red_square_moving_left_")


def test_png_grid_with_a_task_file_and_its_own_checkpoint(common, ckpt, task_file, tmp_path):
    """A relative default_ckpt_dir in a --task file is found from the file's folder: no --ckpt_dir needed."""
    own = ckpt.parent / "own-task.json"
    own.write_text(json.dumps({**json.loads(task_file.read_text()), "default_ckpt_dir": ckpt.name}))
    grid = tmp_path / "grid.png"
    assert generate.main([*common, "--task", str(own), "--save_file", str(grid)]) == 0
    assert iio.imread(grid).shape == (32, 5 * 32, 3)  # 5 frames in one row
    assert json.loads(sidecar_path(grid).read_text())["save_file"] == str(grid)


def test_nan_is_one_line_with_its_step(base, tmp_path, monkeypatch, capsys):
    original = guidance.call_expert
    monkeypatch.setattr(guidance, "call_expert", lambda *args: original(*args) * float("nan"))
    assert generate.main([*base, "--save_file", str(tmp_path / "a.mp4")]) == 1
    err = capsys.readouterr().err
    assert err == "error: NaN/Inf in the latent at step 0 (high_noise expert); try another seed or dtype\n"
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--task", "t2v-nope"], "unknown task 't2v-nope'"),
        (["--task", "missing.json"], "task config missing.json does not exist"),
        (["--size", "64*64"], "--size '64\\*64': task t2v-test takes W\\*H, one of: 32\\*32, 48\\*32"),
        (["--frame_num", "16"], "--frame_num 16: must be 4n\\+1 \\(e.g. 13 or 17\\)"),
        (["--sample_steps", "0"], "--sample_steps 0: must be an integer >= 1"),
        (["--prompt", " "], "the prompt is empty"),
        (["--ckpt_dir", "NOPE"], "--ckpt_dir 'NOPE': does not exist"),
        (None, "needs --ckpt_dir"),  # no --ckpt_dir, and the task ships no checkpoint
        (["--save_file", "FILE/a.mp4"], "FILE is a file, not a folder"),
        (["--save_file", "a.avi"], "must end in .mp4"),
        (["--ulysses_size", "2"], "need several processes: run with torchrun"),
        (["--cfg_parallel"], "need several processes: run with torchrun"),
        (["--dist_timeout_s", "0"], "--dist_timeout_s 0.0: must be a finite number > 0"),
        (["--fp8", "attn"], "--fp8 attn: unknown scope; choose one of: all, ffn"),
        (["--fp8", "ffn"], "--fp8: float8 needs a GPU with compute capability >= 8.9; the device is cpu"),
        (["--vae_dtype", "float16"], "unknown --vae_dtype 'float16'; choose one of: float32, bfloat16"),
    ],
)
def test_bad_input_is_exit_2_one_line_no_output(common, base, tmp_path, monkeypatch, capsys, flags, message):
    monkeypatch.setattr(engine, "build_engine", lambda *a: pytest.fail("the model must not load"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("")
    args = [*common, "--save_file", "out.mp4"] if flags is None else [*base, "--save_file", "out.mp4", *flags]
    assert generate.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]


def test_bad_input_in_a_real_process_prints_only_the_error():
    """No warning, log line or traceback around it: the whole of stderr is the one line."""
    result = subprocess.run(
        [sys.executable, "generate.py", "--task", "t2v-nope", "--prompt", PROMPT],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: unknown task 't2v-nope'") and result.stderr.count("\n") == 1


# ----------------------------------------------------------------------------------- signals and names
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_while_saving_is_one_line_and_leaves_no_file(base, tmp_path, monkeypatch, capsys, sig, code):
    """The signal lands while the temporary PNG is on disk: exit 128 + signal, nothing left in the folder."""
    original = wan.video.iio.imwrite

    def write_then_signal(path, *args, **kwargs):
        original(path, *args, **kwargs)
        assert Path(path).is_file()
        signal.raise_signal(sig)

    monkeypatch.setattr(wan.video.iio, "imwrite", write_then_signal)
    before = signal.getsignal(sig)  # SIG_IGN for SIGINT when the suite runs in the background
    out = tmp_path / "out"
    assert generate.main([*base, "--save_file", str(out / "a.png")]) == code
    assert capsys.readouterr().err == f"error: stopped by {sig.name}; no partial file is left\n"
    assert not list(out.iterdir())
    assert signal.getsignal(sig) == before  # the handlers are restored


def test_signal_mid_run_in_a_real_process(base, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "generate.py", *base, "--save_dir", str(out)], cwd=REPO, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not list(out.glob(".*.lock")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # the run claims its output just before the model loads
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    assert proc.stderr.read() == "error: stopped by SIGINT; no partial file is left\n"
    assert not list(out.iterdir())


def test_default_names_are_unique_and_claimed(base, tmp_path, capsys, monkeypatch):
    plan = build_plan(GenerationSettings(prompt=PROMPT, size="128*128"), load_task_config("t2v-tiny"))
    names = {default_video_path("t2v-tiny", plan, str(tmp_path)) for _ in range(100)}
    assert len(names) == 100  # same prompt, same second
    monkeypatch.setattr(engine, "build_engine", lambda *a: pytest.fail("the model must not load"))
    video = tmp_path / "a.mp4"
    with claim_output(video):  # another run is writing a.mp4
        assert generate.main([*base, "--save_file", str(video)]) == 2
    assert "another run is writing it now" in capsys.readouterr().err
