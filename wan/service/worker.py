"""The one worker thread: runs queued jobs in order on the loaded engine and writes their videos atomically.

A video is written (video, then sidecar, each by rename) before its job is marked completed. A job
found with its sidecar already in place was finished by a process that died before recording it:
it is marked completed without being generated again, so each job completes exactly once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from wan.engine import Engine, build_engine
from wan.errors import BAD_INPUT, NonFiniteLatentError, one_line
from wan.options import resolve_options
from wan.outputs import sidecar_path, write_outputs
from wan.paths import TEMP_NAME, temp_files
from wan.plan import StepPlan, build_plan
from wan.service.store import CANCELLED, COMPLETED, FAILED, JobRecord, JobStore
from wan.settings import GenerationSettings

logger = logging.getLogger(__name__)

RESULT_KEYS = ("settings", "seconds", "forwards", "steps", "tokens", "loras", "options", "computed_forwards")
"""What a completed job's answer repeats from its sidecar."""


class JobCancelled(Exception):
    """Raised from the step callback when the running job was cancelled."""


class EngineCache:
    """The loaded engine; rebuilt when a job needs other per-job model flags (a preset, LoRAs)."""

    def __init__(self, server_flags: Mapping[str, Any], engine: Engine, key: Mapping[str, Any]):
        self.server_flags = dict(server_flags)
        self.engine = engine
        self.key = _key(key)

    def get(self, key: Mapping[str, Any], settings: GenerationSettings) -> Engine:
        if _key(key) != self.key:
            logger.info("loading the model for %s", json.dumps(dict(key)))
            self.engine = None  # the old weights go before the new load
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.key = None
            options = resolve_options({**self.server_flags, **key})
            self.engine = build_engine(options, [build_plan(settings, options.config)])
            self.key = _key(key)
        return self.engine


def _key(key: Mapping[str, Any]) -> str:
    return json.dumps(dict(key), sort_keys=True)


class Worker:
    """One thread per process; ``progress`` holds the running job's percentage (0-100)."""

    def __init__(self, store: JobStore, engines: EngineCache, videos_dir: Path, fps: int):
        self.store = store
        self.engines = engines
        self.videos_dir = videos_dir
        self.fps = fps
        self.progress: dict[str, int] = {}
        self._cancel: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="wan-service-worker", daemon=True)

    def start(self) -> None:
        for path in self.videos_dir.glob(".*.tmp.*"):  # left by a killed writer; this process is the only one
            if TEMP_NAME.match(path.name):
                path.unlink(missing_ok=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the loop to end after the job it is running (a shutdown; the job stays recorded as in progress
        and resumes on the next start if the process dies first)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def notify(self) -> None:
        """A job was queued."""
        self._wake.set()

    def request_cancel(self, job_id: str) -> None:
        self._cancel.add(job_id)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.store.claim_next()
                if job is not None:
                    self.run_job(job)
                    continue
            except Exception:  # the job table unwritable (a full disk): keep the thread, try again shortly
                logger.exception("the worker could not take or record a job; retrying")
            self._wake.wait(timeout=1.0)
            self._wake.clear()

    def video_path(self, job_id: str) -> Path:
        return self.videos_dir / f"{job_id}.mp4"

    def run_job(self, job: JobRecord) -> None:
        """Generate, write, record; every outcome ends the job in one state change."""
        path = self.video_path(job.id)
        if (sidecar := _read_sidecar(path)) is not None and sidecar.get("settings") == job.settings:
            logger.info("job %s: its video was written before a restart; recorded as completed", job.id)
            self._finish(job.id, COMPLETED, output=path.name, result=_result(sidecar))
            return
        for temp in temp_files(path):
            temp.unlink(missing_ok=True)
        self.progress[job.id] = 0
        try:
            settings = GenerationSettings(**job.settings)
            engine = self.engines.get(job.engine, settings)
            start = time.perf_counter()
            result = engine.generate(settings, progress=False, on_step=self._on_step(job.id))
            written = time.perf_counter()
            write_outputs(result, path, self.fps, {**engine.sidecar_context(), "job": job.id})
            spent = {"generate": written - start, "write": time.perf_counter() - written}
        except JobCancelled:
            self._finish(job.id, CANCELLED)
        except (*BAD_INPUT, NonFiniteLatentError) as exc:
            self._finish(job.id, FAILED, error=str(exc))
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            self._finish(job.id, FAILED, error=f"out of memory: {one_line(exc)}")
        except Exception as exc:  # one job's failure must not stop the queue; its trace goes to the log
            logger.exception("job %s failed", job.id)
            self._finish(job.id, FAILED, error=f"internal error ({one_line(exc)})")
        else:
            spent = {k: round(v, 4) for k, v in spent.items()}
            self._finish(
                job.id,
                COMPLETED,
                output=path.name,
                result={**_result(_read_sidecar(path) or {}), "worker_seconds": spent},
            )
        finally:
            self.progress.pop(job.id, None)
            self._cancel.discard(job.id)

    def _on_step(self, job_id: str) -> Callable[[StepPlan, torch.Tensor], None]:
        def on_step(step: StepPlan, latents: torch.Tensor) -> None:
            if job_id in self._cancel:
                raise JobCancelled(job_id)
            self.progress[job_id] = min(99, 100 * (step.index + 1) // max(step.steps or 1, 1))

        return on_step

    def _finish(self, job_id: str, status: str, **fields: Any) -> None:
        if not self.store.finish(job_id, status, **fields):
            logger.error("job %s was not in progress when it ended as %s", job_id, status)
        elif status == FAILED:
            logger.error("job %s failed: %s", job_id, fields.get("error"))
        else:
            logger.info("job %s %s", job_id, status)


def _read_sidecar(video: Path) -> dict[str, Any] | None:
    try:
        return json.loads(sidecar_path(video).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _result(sidecar: Mapping[str, Any]) -> dict[str, Any]:
    return {key: sidecar[key] for key in RESULT_KEYS if key in sidecar}
