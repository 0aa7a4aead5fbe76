"""The service's one way in for both the API and the page: upload images; submit, look up, list, cancel and
delete jobs.

``open_service`` builds it: it takes the folder (one server per folder, held by a lock the kernel
drops when the process dies), returns interrupted jobs to the queue, loads the model once and
starts the worker.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from wan.engine import build_engine
from wan.errors import ConfigError
from wan.options import resolve_options
from wan.outputs import check_writable_dir
from wan.service.images import IMAGES_DIR, ImageStore, StoredImage
from wan.service.requests import JobSpec, Limits, RequestParser
from wan.service.store import COMPLETED, FINISHED, IN_PROGRESS, JobRecord, JobStore
from wan.service.worker import EngineCache, Worker, sidecar_path

logger = logging.getLogger(__name__)

LOCK_NAME = "service.lock"
VIDEOS_DIR = "videos"


class JobService:
    """Jobs in, answers out; the routes and the page are thin layers over this."""

    def __init__(self, store: JobStore, worker: Worker, parser: RequestParser, limits: Limits, lock_fd: int):
        self.store = store
        self.worker = worker
        self.parser = parser
        self.limits = limits
        self._lock_fd = lock_fd

    def close(self, timeout: float | None = None) -> None:
        """Stop after the running job (waiting up to ``timeout``), close the table, free the folder."""
        self.worker.stop(timeout)
        self.store.close()
        os.close(self._lock_fd)

    def upload_image(self, data: bytes, filename: str | None) -> StoredImage:
        """Check and store an image for image-to-video requests; ``ConfigError`` refuses it in one line."""
        config = self.parser.config
        if config.kind == "t2v":
            raise ConfigError(f"task {config.task} takes no image: this server makes videos from text alone")
        return self.parser.images.add(data, filename)

    def submit(self, data: Any) -> JobRecord:
        """Validate and queue (committed before returning); ``ConfigError`` or ``QueueFull`` refuse it."""
        spec = data if isinstance(data, JobSpec) else self.parser.parse(data)
        job = self.store.add(spec.request, asdict(spec.settings), spec.engine, self.limits.max_queue)
        self.worker.notify()
        return job

    def get(self, job_id: str) -> JobRecord | None:
        return self.store.get(job_id)

    def progress(self, job: JobRecord) -> int:
        if job.status == COMPLETED:
            return 100
        return self.worker.progress.get(job.id, 0) if job.status == IN_PROGRESS else 0

    def video_path(self, job: JobRecord) -> Path | None:
        """The completed job's video; None before it is complete (a half-written file is never named)."""
        return self.worker.videos_dir / job.output if job.status == COMPLETED and job.output else None

    def cancel_or_delete(self, job_id: str) -> str | None:
        """A queued job is cancelled, a running one asked to stop; a finished one's files and record go.

        Returns "cancelled", "in_progress" (stopping at its next step), "deleted", or None for an unknown id.
        """
        job = self.store.get(job_id)
        if job is None:
            return None
        if job.status in FINISHED:
            if job.output:
                video = self.worker.videos_dir / job.output
                sidecar_path(video).unlink(missing_ok=True)  # the sidecar first: it vouches for the video
                video.unlink(missing_ok=True)
            return "deleted" if self.store.delete(job_id) else None
        status = self.store.cancel(job_id)
        if status == IN_PROGRESS:
            self.worker.request_cancel(job_id)
        return status

    def describe(self, job: JobRecord) -> dict[str, Any]:
        """The job as the API answers it (OpenAI's video object, plus this server's settings and seconds)."""
        result = job.result or {}
        return {
            "id": job.id,
            "object": "video",
            "status": job.status,
            "progress": self.progress(job),
            "created_at": job.created_at,
            "started_at": job.started_at,
            "completed_at": job.finished_at if job.status == COMPLETED else None,
            "finished_at": job.finished_at,
            "attempts": job.attempts,
            "prompt": job.settings["prompt"],
            "size": job.settings["size"],
            "request": job.request,
            "settings": result.get("settings", job.settings),
            "seconds": result.get("seconds"),
            "result": {k: v for k, v in result.items() if k not in ("settings", "seconds")} or None,
            "error": {"message": job.error} if job.error else None,
        }


def hold_folder(save_dir: Path) -> int:
    """One server per folder: two workers on one queue would run jobs twice. Returns the lock's descriptor."""
    fd = os.open(save_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise ConfigError(f"--save_dir {save_dir} is in use by another serve.py; stop it or choose another") from exc
    return fd


def open_service(flags: Mapping[str, Any], save_dir: Path, lora_dir: Path | None, limits: Limits) -> JobService:
    """Everything before the port opens: folder, lock, image store, queue recovery, model, worker (started)."""
    check_writable_dir(save_dir, "--save_dir")
    lock_fd = hold_folder(save_dir)  # held until ``close``, or the process ends
    options = resolve_options(flags)
    images = ImageStore(save_dir / IMAGES_DIR, limits.max_image_bytes)
    parser = RequestParser(flags, options.config, lora_dir, limits, images)
    store = JobStore(save_dir)
    resumed = store.recover()
    if resumed:
        logger.info("%d interrupted jobs go back to the queue: %s", len(resumed), ", ".join(resumed))
    engine = build_engine(options)
    key = {"preset": parser.preset, **parser.server_loras}  # the model flags a job without its own asks for
    videos = save_dir / VIDEOS_DIR
    videos.mkdir(exist_ok=True)
    worker = Worker(store, EngineCache(flags, engine, key), videos, options.config.fps)
    worker.start()
    return JobService(store, worker, parser, limits, lock_fd)
