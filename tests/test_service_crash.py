"""kill -9 with one job running and two queued: after a restart all three complete, each exactly once."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
from service_helpers import PROMPT, WAIT_S, LiveServer, free_port, videos_in, wait_for

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


def test_a_video_written_but_not_recorded_is_not_made_again(tmp_path):
    """The narrowest crash: after the atomic write, before the completion commit."""
    live = LiveServer(["--save_dir", str(tmp_path), "--frame_num", "5", "--sample_steps", "2"])
    try:
        job_id = live.client.post("/v1/videos", json={"prompt": PROMPT}).json()["id"]
        wait_for(live.client, [job_id])
    finally:
        live.close()
    video = tmp_path / "videos" / f"{job_id}.mp4"
    written = os.stat(video)
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:  # as the table stood when the process died
        db.execute("UPDATE jobs SET status = 'in_progress', output = NULL, result = NULL, finished_at = NULL")
        db.execute("DELETE FROM events WHERE event = 'completed'")

    live = LiveServer(["--save_dir", str(tmp_path)])
    try:
        answer = wait_for(live.client, [job_id])[job_id]
        events = [e for j, e in live.service.store.events() if j == job_id]
    finally:
        live.close()
    assert answer["status"] == "completed" and answer["attempts"] == 2
    assert events.count("completed") == 1 and "interrupted" in events
    again = os.stat(video)
    assert (again.st_ino, again.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)  # not written again
    assert answer["settings"]["frame_num"] == 5 and answer["seconds"]
