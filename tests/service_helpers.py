"""A real service for the tests: serve.py's own startup, a real uvicorn server on a free port, a real HTTP client."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import uvicorn

import serve
from wan.service.app import create_app
from wan.service.store import FINISHED

WAIT_S = 900.0  # a bound for a hung server on a busy 2-core machine, not a timing check
PROMPT = "a red square moving left"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """serve.py's service and app, listening on 127.0.0.1 in a thread of the test process."""

    def __init__(self, argv: list[str], *, page: bool = False):
        args = serve.build_parser().parse_args(argv)
        self.service = serve.open_from_args(args)
        self.app = create_app(self.service, args.api_key, page=page)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=free_port(), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.server.config.port}"
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def close(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(30)
        self.service.close(timeout=WAIT_S)


def wait_for(
    client: httpx.Client, ids: Iterable[str], statuses: Iterable[str] = FINISHED, poll_s: float = 0.1
) -> dict[str, Any]:
    """Poll every ``poll_s`` until every job is in one of ``statuses``; their last answers by id."""
    pending, done = set(ids), {}
    deadline = time.monotonic() + WAIT_S
    while pending:
        assert time.monotonic() < deadline, f"jobs never reached {statuses}: {sorted(pending)}"
        for job_id in sorted(pending):
            answer = client.get(f"/v1/videos/{job_id}").json()
            if answer["status"] in statuses:
                done[job_id] = answer
                pending.discard(job_id)
        time.sleep(poll_s)
    return done


def videos_in(save_dir: Path) -> list[Path]:
    return sorted((save_dir / "videos").glob("*.mp4"))
