"""Batch generation (generate.py --prompt_file, wan.batch) on a tiny random checkpoint.

A batch must lose nothing: killed mid-way and re-run, every item ends done exactly once with no
partial file; bad lines, NaN, out of memory and write errors are recorded per item; a full disk
stops the batch cleanly and keeps what is finished.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from tiny_models import CAPTIONS

import generate
import wan.outputs
from wan import engine, guidance
from wan.batch.manifest import Manifest
from wan.config import LOW
from wan.outputs import sidecar_path
from wan.text2video import WanT2V
from wan.video import read_video

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "batch_generate.sh"


@pytest.fixture
def cli(ckpt, task_file, tmp_path):
    """Argument list for a batch of ``lines`` into tmp_path/out."""

    def make(lines: list[str], *extra: str) -> list[str]:
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("\n".join(lines) + "\n")
        base = ["--task", str(task_file), "--ckpt_dir", str(ckpt), "--device", "cpu", "--quiet"]
        return [*base, "--prompt_file", str(prompts), "--save_dir", str(tmp_path / "out"), *extra]

    return make


def manifest(out: Path) -> list[dict]:
    return Manifest(out / "manifest.jsonl").records()


def temp_files(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if ".tmp" in p.name]


def assert_complete(path: Path, frames: int = 5, height: int = 32, width: int = 32) -> None:
    assert read_video(path).shape == (frames, height, width, 3)
    assert json.loads(sidecar_path(path).read_text())["save_file"] == str(path)


def test_batch_sidecars_record_each_experts_cache_setting(cli, tmp_path):
    """The batch's sidecar context is made before any load: the cache settings must not depend on the load."""
    assert generate.main(cli(CAPTIONS[:1], "--cache", "fbc:0.2")) == 0
    (video,) = (tmp_path / "out").glob("*.mp4")
    options = json.loads(sidecar_path(video).read_text())["options"]
    assert options["cache_settings"] == {"method": "fbc", "high_noise": 0.2, "low_noise": 0.2}


# ----------------------------------------------------------------------------------- resume
def test_killed_batch_resumes_with_every_item_done_once(cli, tmp_path):
    """SIGKILL mid-batch, then the same command: each item done exactly once, no partial file left."""
    args = cli(CAPTIONS)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "generate.py", *args], cwd=REPO, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300  # generous: CI machines may be busy
    while proc.poll() is None and time.monotonic() < deadline:
        record = out / "manifest.jsonl"  # the folder is made a moment before the manifest
        done = record.read_text().count('"status": "done"') if record.exists() else 0
        if done >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the batch ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = Counter(r["id"] for r in manifest(out) if r["status"] == "done")
    assert 2 <= sum(first.values()) < len(CAPTIONS)

    assert generate.main(args) == 0
    records = manifest(out)
    done = Counter(r["id"] for r in records if r["status"] == "done")
    assert len(done) == len(CAPTIONS) and set(done.values()) == {1}
    assert {r["id"] for r in records if r["status"] == "skipped"} == set(first)
    videos = sorted(out.glob("*.mp4"))
    assert len(videos) == len(CAPTIONS) and not temp_files(out)
    for video in videos:
        assert_complete(video)


def test_sigterm_stops_a_batch_that_then_resumes_exactly(cli, tmp_path):
    args = cli(CAPTIONS[:4])
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "generate.py", *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        record = out / "manifest.jsonl"  # the folder is made a moment before the manifest
        if record.exists() and '"status": "done"' in record.read_text():
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    assert proc.stderr.read().splitlines()[-1] == (
        "error: stopped by SIGTERM; no partial file is left; re-run the same command to resume"
    )
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary or lock file
    first = [r["id"] for r in manifest(out) if r["status"] == "done"]
    assert 1 <= len(first) < 4

    assert generate.main(args) == 0
    records = manifest(out)
    done = Counter(r["id"] for r in records if r["status"] == "done")
    assert len(done) == 4 and set(done.values()) == {1}
    assert [r["id"] for r in records if r["status"] == "skipped"] == first


def test_two_batches_on_one_folder_make_each_item_once(cli, tmp_path):
    """Each item is claimed while it is made: one process makes it, the other records it as skipped."""
    args = cli(CAPTIONS[:4])
    out = tmp_path / "out"
    procs = [
        subprocess.Popen([sys.executable, "generate.py", *args], cwd=REPO, stdout=subprocess.DEVNULL) for _ in range(2)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    lines = (out / "manifest.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line whole
    assert Counter((r["id"], r["status"]) for r in records) == Counter(
        {(r["id"], status): 1 for r in records for status in ("done", "skipped")}
    )
    assert len(records) == 2 * 4
    for video in out.glob("*.mp4"):
        assert_complete(video)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_rerun_verifies_outputs_and_records_lost_ones(cli, tmp_path, monkeypatch):
    """A verified video without its manifest line is recorded, not redone; a broken one is redone."""
    args = cli(CAPTIONS[:3])
    out = tmp_path / "out"
    assert generate.main(args) == 0
    first = manifest(out)
    lost, broken = first[1], first[2]
    # A kill after item 1's sidecar (its line is lost) and while the manifest was being written;
    # item 2's video is damaged; a temporary file is left by a kill mid-write.
    (out / "manifest.jsonl").write_text(json.dumps(first[0]) + "\n" + json.dumps(broken) + "\n" + '{"index": 3, "st')
    Path(broken["output"]).write_bytes(Path(broken["output"]).read_bytes()[:100])
    stale = out / ".0009_x.mp4.abc123abc123.tmp.mp4"
    stale.write_bytes(b"partial")
    generated = []
    original = WanT2V.generate

    def recording(self, settings, **kw):
        generated.append(settings.prompt)
        return original(self, settings, **kw)

    monkeypatch.setattr(WanT2V, "generate", recording)

    assert generate.main(args) == 0
    assert generated == [broken["settings"]["prompt"]]
    again = manifest(out)[2:]
    assert [(r["id"], r["status"], r["recovered"]) for r in again] == [
        (first[0]["id"], "skipped", False),
        (lost["id"], "done", True),
        (broken["id"], "done", False),
    ]
    assert again[2]["seed"] == broken["seed"]  # the same seed: a re-run makes the same video
    assert_complete(Path(broken["output"]))
    assert not temp_files(out)


def test_changed_settings_are_generated_again(cli, tmp_path):
    out = tmp_path / "out"
    assert generate.main(cli(CAPTIONS[:1])) == 0
    assert generate.main(cli(CAPTIONS[:1], "--sample_steps", "2")) == 0
    assert [(r["status"], r["settings"]["sample_steps"]) for r in manifest(out)] == [("done", 3), ("done", 2)]


# ----------------------------------------------------------------------------------- bad items
def test_bad_lines_are_recorded_and_the_others_complete(cli, tmp_path, capsys, monkeypatch):
    lines = [
        '{"prompt": "a red square moving left", "seed": 3}',
        '{"prompt": "a blue circle moving right", "frame_num": 16}',
        '{"prompt": "a green triangle moving up",',
        "# a comment, then a blank line",
        "",
        '{"prompt": "a yellow square moving down", "colour": "red"}',
        "two shapes bouncing",
        '{"prompt": "a cat walking on grass", "size": "48*32", "save_file": "cat.png", '
        '"enable_half_frame_generation": true}',
    ]
    args = cli(lines, "--base_seed", "100")
    out = tmp_path / "out"
    assert generate.main(args) == 3
    records = {r["index"]: r for r in manifest(out)}
    statuses = {i: r["status"] for i, r in records.items()}
    assert statuses == {0: "done", 1: "failed", 2: "failed", 3: "failed", 4: "done", 5: "done"}
    assert "--frame_num 16: must be 4n+1" in records[1]["error"] and records[1]["line"] == 2
    assert "not valid JSON" in records[2]["error"]
    assert "unknown key 'colour'" in records[3]["error"] and records[3]["line"] == 6
    assert (records[0]["seed"], records[4]["seed"]) == (3, 104)  # explicit, then base_seed + index
    assert_complete(Path(records[0]["output"]))
    assert Path(records[4]["output"]) == out / "0004_two_shapes_bouncing.mp4"
    cat = json.loads((out / "cat.png.json").read_text())
    assert cat["settings"]["half_frame"] and cat["settings"]["size"] == "48*32"
    assert set(cat["seconds"]) >= {"text_encoding", "high_noise", "completion", "low_noise", "vae_decode"}
    assert cat["item"] == {"index": 5, "id": "0005_a_cat_walking_on_grass", "line": 8}
    printed = capsys.readouterr().out.split()
    assert printed == [records[i]["output"] for i in (0, 4, 5)]

    # The same command again: the finished items are skipped without loading the model.
    monkeypatch.setattr(engine, "build_engine", lambda *a: pytest.fail("every valid item is complete: nothing loads"))
    assert generate.main(args) == 3
    again = manifest(out)[len(records) :]
    assert [r["status"] for r in again] == ["skipped", "failed", "failed", "failed", "skipped", "skipped"]


def test_clip_mp4_and_clip_png_keep_their_own_sidecars(cli, tmp_path, monkeypatch):
    lines = [
        '{"prompt": "a red square moving left", "save_file": "clip.mp4"}',
        '{"prompt": "x", "save_file": "clip.png"}',
    ]
    args = cli(lines)
    out = tmp_path / "out"
    assert generate.main(args) == 0
    assert json.loads((out / "clip.mp4.json").read_text())["save_file"] == str(out / "clip.mp4")
    assert json.loads((out / "clip.png.json").read_text())["save_file"] == str(out / "clip.png")
    monkeypatch.setattr(engine, "build_engine", lambda *a: pytest.fail("both are complete: nothing to make"))
    assert generate.main(args) == 0
    assert [r["status"] for r in manifest(out)] == ["done", "done", "skipped", "skipped"]


# ----------------------------------------------------------------------------------- failures in the loop
def test_nan_and_out_of_memory_are_recorded_per_item(cli, tmp_path, monkeypatch):
    """NaN from the low-noise expert on 48*32 items, out of memory on 9-frame items; the rest complete."""
    original = guidance.call_expert

    def faulty(expert, branch, hidden, timestep, context, plan):
        if hidden.shape[2] == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        out = original(expert, branch, hidden, timestep, context, plan)
        return out * float("nan") if hidden.shape[-1] == 48 // 8 and plan.expert == LOW else out

    monkeypatch.setattr(guidance, "call_expert", faulty)
    lines = [
        '{"prompt": "a red square moving left", "size": "48*32"}',
        '{"prompt": "a red square moving left", "frame_num": 9}',
        "a blue circle moving right",
    ]
    assert generate.main(cli(lines)) == 2
    nan, oom, ok = manifest(tmp_path / "out")
    assert (nan["status"], nan["step"], nan["expert"]) == ("failed", 2, "low_noise")  # steps 0-1 are high-noise
    assert "NaN/Inf in the latent at step 2 (low_noise expert)" in nan["error"]
    assert oom["status"] == "failed" and oom["error"].startswith("out of memory at 32*32, 9 frames: OutOfMemoryError")
    assert ok["status"] == "done"
    assert not Path(nan["output"]).exists() and not Path(oom["output"]).exists()


@pytest.mark.parametrize(
    ("code", "exit_code", "statuses"),
    [
        (errno.ENOSPC, 3, ["done", "failed"]),  # full disk: stop, 2 items not reached
        (errno.EACCES, 1, ["done", "failed", "done", "done"]),  # one unwritable file: go on
    ],
)
def test_write_errors_keep_finished_items(cli, tmp_path, monkeypatch, capsys, code, exit_code, statuses):
    calls = []
    original = wan.outputs.save_video

    def failing_second(video, path, fps):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(code, os.strerror(code), str(path))
        return original(video, path, fps)

    monkeypatch.setattr(wan.outputs, "save_video", failing_second)
    args = cli(CAPTIONS[:4])
    out = tmp_path / "out"
    assert generate.main(args) == exit_code
    records = manifest(out)
    assert [r["status"] for r in records] == statuses
    assert f"cannot write {calls[1]}: {os.strerror(code)}" == records[1]["error"]
    err = capsys.readouterr().err
    if code == errno.ENOSPC:
        assert err.count("\n") == 1 and "No space left on device" in err and "2 items not reached" in err
    assert_complete(Path(records[0]["output"]))
    assert not Path(records[1]["output"]).exists() and not temp_files(out)

    monkeypatch.setattr(wan.outputs, "save_video", original)
    assert generate.main(args) == 0
    finished = statuses.count("done")
    assert Counter(r["status"] for r in manifest(out)[len(records) :]) == {"skipped": finished, "done": 4 - finished}


# ----------------------------------------------------------------------------------- batch-level errors
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing_prompt_file", "--prompt_file .*: does not exist"),
        ("empty_prompt_file", "has no prompts"),
        ("save_dir_under_a_file", "--save_dir .*file is a file, not a folder"),
        ("with_prompt", "--prompt and --prompt_file exclude each other"),
        ("with_save_file", "--save_file names one video"),
        ("bad_task", "unknown task"),
    ],
)
def test_batch_input_errors_exit_2_before_loading(cli, tmp_path, monkeypatch, capsys, change, message):
    monkeypatch.setattr(engine, "build_engine", lambda *a: pytest.fail("the model must not load"))
    args = cli(CAPTIONS[:2])
    prompts = tmp_path / "prompts.txt"
    if change == "missing_prompt_file":
        prompts.unlink()
    elif change == "empty_prompt_file":
        prompts.write_text("\n# nothing\n")
    elif change == "save_dir_under_a_file":
        (tmp_path / "file").write_text("")
        args += ["--save_dir", str(tmp_path / "file" / "out")]
    elif change == "with_prompt":
        args += ["--prompt", "x"]
    elif change == "with_save_file":
        args += ["--save_file", str(tmp_path / "x.mp4")]
    else:
        args += ["--task", "t2v-nope"]
    assert generate.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert re.search(message, err)
    assert not list(tmp_path.rglob("*.mp4"))


def test_torchrun_ranks_split_the_items(cli, tmp_path, monkeypatch):
    args = cli(CAPTIONS[:3])
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("LOCAL_RANK", rank)
        assert generate.main(args) == 0
    assert [r["index"] for r in manifest(tmp_path / "out")] == [1, 0, 2]


# ----------------------------------------------------------------------------------- script
def test_batch_script_runs_each_file_and_mode(tmp_path):
    files = [tmp_path / "a.txt", tmp_path / "b.jsonl"]
    for f in files:
        f.write_text("x\n")
    cmd = [str(SCRIPT), "--dry_run", "--gpus", "2", "--modes", "baseline,half_cfg", "--out", "o", *map(str, files)]
    result = subprocess.run(["bash", *cmd, "--", "--task", "t2v-A14B"], capture_output=True, text=True, check=True)
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and all(line.startswith("torchrun --standalone --nproc_per_node 2 ") for line in lines)
    assert "--prompt_file " + str(files[1]) + " --save_dir o/b/half_cfg --enable_half_frame_generation" in lines[3]
    assert lines[3].endswith("--cfg_truncate_high_noise_steps 3 --task t2v-A14B ")
    for bad in (["--modes", "fast", str(files[0])], [], [str(tmp_path / "none.txt")], ["--gpus", "0", str(files[0])]):
        failed = subprocess.run(["bash", str(SCRIPT), *bad], capture_output=True, text=True)
        assert failed.returncode == 2 and "error: " in failed.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--save_dir", "X"], "--save_dir cannot be passed through: each prompt file and mode gets its own"),
        (["--save_dir=X"], "--save_dir=X cannot be passed through"),
        (["--prompt_file", "y.txt"], "--prompt_file cannot be passed through"),
        (["--save_file", "a.mp4"], "--save_file cannot be passed through"),
        (["--enable_half_frame_generation"], "--modes sets it, so modes would share outputs"),
        (["--cfg_truncate_steps=2"], "--modes sets it"),
        (["--ulysses_size", "2"], "a batch gives each GPU whole items"),
    ],
)
def test_batch_script_refuses_flags_that_would_mix_modes(tmp_path, flags, message):
    prompts = tmp_path / "a.txt"
    prompts.write_text("x\n")
    result = subprocess.run(
        [
            "bash",
            str(SCRIPT),
            "--dry_run",
            "--modes",
            "baseline,half",
            str(prompts),
            "--",
            "--task",
            "t2v-tiny",
            *flags,
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and message in result.stderr and result.stderr.count("\n") == 1
