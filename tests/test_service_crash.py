"""kill -9 with one job running and two queued: after a restart all three complete, each exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from service_helpers import PROMPT, WAIT_S, free_port, videos_in, wait_for

from wan.config import REPO_ROOT
from wan.service.store import JobStore
from wan.video import read_video


def start(save_dir: Path) -> tuple[subprocess.Popen, httpx.Client]:
    """serve.py as its own process; returns once it answers."""
    port = free_port()
    argv = ["serve.py", "--save_dir", str(save_dir), "--port", str(port), "--frame_num", "5", "--sample_steps", "2"]
    with open(save_dir / f"serve-{port}.log", "w") as log:  # the process keeps its own copy of the handle
        process = subprocess.Popen([sys.executable, *argv, "--quiet"], cwd=REPO_ROOT, stdout=log, stderr=log)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    deadline = time.monotonic() + WAIT_S
    while True:
        assert process.poll() is None, (save_dir / f"serve-{port}.log").read_text()
        assert time.monotonic() < deadline, "serve.py never answered"
        try:
            if client.get("/v1/videos").status_code == 200:
                return process, client
        except httpx.TransportError:
            time.sleep(0.2)


def test_kill_9_loses_nothing_and_repeats_nothing(tmp_path):
    process, client = start(tmp_path)
    try:
        ids = [client.post("/v1/videos", json={"prompt": PROMPT, "sample_steps": 30}).json()["id"]]
        ids += [client.post("/v1/videos", json={"prompt": f"{PROMPT} {i}"}).json()["id"] for i in range(2)]
        running = ids[0]
        while client.get(f"/v1/videos/{running}").json()["progress"] == 0:
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        client.close()

    store = JobStore(tmp_path)
    assert [store.get(i).status for i in ids] == ["in_progress", "queued", "queued"]
    store.close()
    leftover = tmp_path / "videos" / f".{running}.mp4.0123456789ab.tmp.mp4"  # as a writer killed mid-file leaves
    leftover.write_bytes(b"half a video")

    process, client = start(tmp_path)
    try:
        answers = wait_for(client, ids)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait()
        client.close()

    assert [answers[i]["status"] for i in ids] == ["completed"] * 3
    assert [answers[i]["attempts"] for i in ids] == [2, 1, 1]
    store = JobStore(tmp_path)
    events = store.events()
    store.close()
    for job_id in ids:
        assert [e for j, e in events if j == job_id].count("completed") == 1
    assert "interrupted" in [e for j, e in events if j == running]
    assert [path.stem for path in videos_in(tmp_path)] == sorted(ids)
    assert not [p for p in os.listdir(tmp_path / "videos") if ".tmp." in p]
    for path in videos_in(tmp_path):
        assert read_video(path).shape[0] == 5
