"""Batch runs on Ray (generate.py --prompt_file F --ray ADDRESS), on a real local Ray cluster of 2 CPU workers.

The same items must give the same files as the single-process batch, and nothing may be lost or made
twice when a worker process or the driver is killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from tiny_models import CAPTIONS

import generate
from wan.batch.manifest import Manifest
from wan.outputs import sidecar_path
from wan.video import read_video

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parent.parent
WORKER_PREFIX = "wan-batch-worker-"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One Ray head with 2 CPUs for the module (starting one takes seconds); stopped by its own process."""
    port = free_port()
    log = tmp_path_factory.mktemp("ray") / "ray.log"
    env = pytest.MonkeyPatch()
    env.setenv("RAY_AUTH_MODE", "disabled")  # a private test cluster: no token for drivers to find
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            [
                "ray", "start", "--head", "--block", "--port", str(port), "--num-cpus", "2", "--num-gpus", "0",
                "--include-dashboard=false", "--disable-usage-stats",
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while "block forever" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    yield address
    proc.send_signal(signal.SIGTERM)  # --block: stops the processes it started
    proc.wait(timeout=60)
    env.undo()
    record = Path("/tmp/ray/ray_current_cluster")  # where `ray start` notes the cluster a bare ray.init() joins
    if record.is_file() and record.read_text().strip().endswith(f":{port}"):
        record.unlink()


@pytest.fixture
def cli(ckpt, task_file, tmp_path):
    """Argument list for a batch of ``lines`` into tmp_path/<out>."""

    def make(lines: list[str], out: str, *extra: str) -> list[str]:
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("\n".join(lines) + "\n")
        base = ["--task", str(task_file), "--ckpt_dir", str(ckpt), "--device", "cpu", "--quiet"]
        return [*base, "--prompt_file", str(prompts), "--save_dir", str(tmp_path / out), *extra]

    return make


def records(out: Path) -> list[dict]:
    return Manifest(out / "manifest.jsonl").records()


def done_count(out: Path) -> int:
    path = out / "manifest.jsonl"
    return path.read_text().count('"status": "done"') if path.exists() else 0


def assert_each_item_done_once(out: Path, count: int) -> list[dict]:
    """Every item has exactly one ``done`` record, its video decodes, and no temporary or lock file is left."""
    done = [r for r in records(out) if r["status"] == "done"]
    assert sorted(Counter(r["index"] for r in done).items()) == [(i, 1) for i in range(count)]
    for r in done:
        assert read_video(r["output"]).shape == (5, 32, 32, 3)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    return done


def worker_pids(address: str, driver_pid: int, count: int) -> dict[str, int]:
    """A driver's Ray workers by name (``worker-N``) -> process id, asked of each actor (answered mid-item)."""
    ray.init(address=address, logging_level="WARNING")
    try:
        prefix = f"{WORKER_PREFIX}{driver_pid}-"
        deadline = time.monotonic() + 120
        while True:
            named = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]
            if len(named) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        actors = {a["name"].removeprefix(prefix): ray.get_actor(a["name"], namespace=a["namespace"]) for a in named}
        pids = ray.get([a.pid.options(concurrency_group="control").remote() for a in actors.values()], timeout=120)
        return {f"worker-{n}": pid for n, pid in zip(actors, pids, strict=True)}
    finally:
        ray.shutdown()


def start_driver(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "generate.py", *args], cwd=REPO, stdout=subprocess.DEVNULL)


def wait_for_done(proc: subprocess.Popen, out: Path, count: int) -> None:
    deadline = time.monotonic() + 300  # generous: CI machines may be busy
    while proc.poll() is None and done_count(out) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the batch ended before it could be interrupted"


# ----------------------------------------------------------------------------------- bad input (no cluster)
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ray", "127.0.0.1:1"], "--ray 127.0.0.1:1: no Ray cluster answers there"),
        (["--ray", "nowhere"], "--ray nowhere: give local, auto, HOST:PORT"),
        (["--ray", "local", "--ray_gpus_per_worker", "2"], "--ray_gpus_per_worker 2: a Ray worker is one process"),
        (["--ray", "local", "--ray_workers", "0"], "--ray_workers 0: give 1 or more"),
    ],
)
def test_bad_ray_flags_are_one_line_exit_2(cli, capsys, extra, message):
    assert generate.main(cli(CAPTIONS[:1], "out", *extra)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {message}")


def test_ray_needs_a_prompt_file(capsys):
    assert generate.main(["--prompt", "x", "--ray", "local", "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("error: --ray runs a batch: give --prompt_file")


# ----------------------------------------------------------------------------------- on the cluster
def test_ray_batch_makes_the_same_files_as_one_process(cli, cluster, tmp_path):
    """Same videos byte for byte, same sidecars but for timings, same per-item failures, worker on each record."""
    lines = [CAPTIONS[0], '{"prompt": "x", "frame_num": 16}', CAPTIONS[1], '{"prompt": "y", "size": "48*32"}']
    assert generate.main(cli(lines, "single", "--base_seed", "7")) == 1
    assert generate.main(cli(lines, "ray", "--base_seed", "7", "--ray", cluster, "--ray_workers", "2")) == 1
    single, on_ray = tmp_path / "single", tmp_path / "ray"
    videos = sorted(p.name for p in single.iterdir() if p.suffix == ".mp4")
    assert len(videos) == 3 and videos == sorted(p.name for p in on_ray.iterdir() if p.suffix == ".mp4")
    for name in videos:
        assert (single / name).read_bytes() == (on_ray / name).read_bytes()
        a, b = (json.loads(sidecar_path(folder / name).read_text()) for folder in (single, on_ray))
        assert a.pop("seconds").keys() == b.pop("seconds").keys()
        assert a["save_file"] == str(single / name) and b["save_file"] == str(on_ray / name)
        assert {**a, "save_file": None} == {**b, "save_file": None}
    first, second = ({r["index"]: r for r in records(folder)} for folder in (single, on_ray))
    assert {i: (r["status"], r["error"], r["seed"]) for i, r in first.items()} == {
        i: (r["status"], r["error"], r["seed"]) for i, r in second.items()
    }
    done = [r for r in second.values() if r["status"] == "done"]
    assert all(r["worker"].startswith("worker-") and r["attempts"] == 1 and r["seconds"]["total"] > 0 for r in done)


def test_a_checkpoint_a_worker_cannot_load_is_one_line_exit_2(cli, cluster, tmp_path, capsys):
    """The driver does not load the model; a worker that cannot is reported as the single-video CLI would."""
    empty = tmp_path / "empty"
    empty.mkdir()
    args = cli(CAPTIONS[:1], "out", "--ray", cluster, "--ray_workers", "1", "--ckpt_dir", str(empty))
    assert generate.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: Ray worker-0: ") and str(empty) in err


def test_a_killed_worker_loses_no_item(cli, cluster, tmp_path):
    """SIGKILL one worker process mid-batch: its item goes to another worker; every item done exactly once."""
    out = tmp_path / "out"
    lines = [f"{CAPTIONS[i % len(CAPTIONS)]} {i}" for i in range(8)]
    proc = start_driver(cli(lines, "out", "--ray", cluster, "--ray_workers", "2", "--sample_steps", "12"))
    pids = worker_pids(cluster, proc.pid, 2)
    wait_for_done(proc, out, 1)
    first = next(r for r in records(out) if r["status"] == "done")
    os.kill(pids[first["worker"]], signal.SIGKILL)  # it made an item, so it is loaded and on its next one
    assert proc.wait(timeout=600) == 0
    done = assert_each_item_done_once(out, 8)
    assert max(r["attempts"] for r in done) == 2  # the killed worker's item was made on its second try
    assert not [r for r in records(out) if r["status"] != "done"]


def test_killed_driver_resumes_without_redoing_items(cli, cluster, tmp_path):
    """kill -9 the driver mid-batch, then the same command: finished items are skipped, the rest made once."""
    out = tmp_path / "out"
    lines = [f"{CAPTIONS[i % len(CAPTIONS)]} {i}" for i in range(5)]
    args = cli(lines, "out", "--ray", cluster, "--ray_workers", "2")
    proc = start_driver(args)
    wait_for_done(proc, out, 1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = {r["index"] for r in records(out) if r["status"] == "done"}
    assert 1 <= len(first) < 5

    assert generate.main(args) == 0
    assert_each_item_done_once(out, 5)
    again = [r for r in records(out) if r["time"] and r["index"] in first and r["status"] == "skipped"]
    assert {r["index"] for r in again} == first


def test_two_drivers_on_one_folder_make_each_item_once(cli, cluster, tmp_path):
    """Two Ray drivers (one worker each) on the same prompt file and folder: each item is made by one of them."""
    out = tmp_path / "out"
    lines = [f"{CAPTIONS[i % len(CAPTIONS)]} {i}" for i in range(6)]
    args = cli(lines, "out", "--ray", cluster, "--ray_workers", "1")
    procs = [start_driver(args) for _ in range(2)]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    assert_each_item_done_once(out, 6)
    assert Counter((r["index"], r["status"]) for r in records(out)) == Counter(
        {(i, status): 1 for i in range(6) for status in ("done", "skipped")}
    )
