"""The batch's record: an append-only JSONL manifest, and the bookkeeping every runner shares.

Every attempt appends one fsynced line, after the video and its sidecar are in place, so a kill at
any moment leaves a manifest that never claims more than exists. A re-run skips an item only if a
``done`` line names its output with the same settings and the output verifies (``wan.outputs``); a
verified output whose line was lost to a kill is recorded as done, not made again. A full or
read-only disk, or a manifest that cannot be written, stops the batch (``BatchStopped``): every later
item would fail the same way.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from wan.batch.jobs import Job
from wan.config import TaskConfig
from wan.errors import ConfigError
from wan.lora import lora_record
from wan.outputs import output_is_complete

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
MAX_EXIT_CODE = 125
"""Exit codes above 125 mean "killed by a signal" or "not runnable" to shells; counts are capped here."""
STOP_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
"""Write errors that every later item would hit too: the batch stops instead of failing them all."""


class BatchStopped(Exception):
    """The batch cannot go on (full disk, unwritable manifest); finished items are kept."""


class Manifest:
    """Append-only JSONL, one record per attempt, fsynced before the next item starts."""

    def __init__(self, path: Path):
        self.path = path

    def prepare(self) -> None:
        """Create the file, or end a line cut short by a kill so the next record starts clean."""
        try:
            with open(self.path, "ab+") as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # another batch process may be appending
                if handle.tell() > 0:
                    handle.seek(-1, os.SEEK_END)
                    if handle.read(1) != b"\n":
                        handle.write(b"\n")
        except OSError as exc:
            raise ConfigError(f"cannot write the manifest {self.path} ({exc.strerror or exc})") from exc

    def records(self) -> list[dict[str, Any]]:
        """All readable records; a line cut short by a kill is skipped."""
        if not self.path.is_file():
            return []
        records = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s line %d is cut short (a kill mid-write); ignored", self.path, number)
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def append(self, record: Mapping[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # with O_APPEND and one write: other processes' lines never interleave
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class BatchSummary:
    done: int = 0  # generated in this run, or found verified with its manifest line lost
    skipped: int = 0  # complete from an earlier run
    failed: int = 0
    not_reached: int = 0  # left after the batch stopped
    stop_error: str | None = None
    outputs: list[Path] = field(default_factory=list)  # complete videos, in the order they were settled

    @property
    def exit_code(self) -> int:
        """0 when every item is complete, else how many are not (failed or not reached), capped at 125."""
        return min(self.failed + self.not_reached, MAX_EXIT_CODE)


class BatchRecorder:
    """Each job's outcome, counted in the summary and appended to the manifest in one step."""

    def __init__(self, manifest: Manifest, config: TaskConfig):
        self.manifest = manifest
        self.config = config
        self.summary = BatchSummary()

    def triage(self, jobs: list[Job]) -> list[Job]:
        """Record what needs no model (invalid items, verified and recorded outputs); return the others."""
        recorded = self.recorded_outputs()
        todo: list[Job] = []
        for job in jobs:
            if job.error is not None:
                self.fail(job, job.error)
            elif job_key(job) in recorded and output_is_complete(job.output, job.settings, job.loras, self.config):
                self.summary.outputs.append(job.output)
                self.summary.skipped += 1
                self.record(job, "skipped")
            else:
                todo.append(job)
        return todo

    def settle_complete(self, job: Job) -> None:
        """A verified output found once claimed: made by another process, or by a run killed before its
        manifest line (then it is recorded as done, not made again)."""
        self.summary.outputs.append(job.output)
        if job_key(job) in self.recorded_outputs():
            self.summary.skipped += 1
            self.record(job, "skipped")
        else:
            logger.info("item %d: %s is complete but unrecorded; recorded as done", job.index, job.output)
            self.summary.done += 1
            self.record(job, "done", recovered=True)

    def save(
        self, job: Job, write: Callable[[], None], timings: Mapping[str, float], start: float, **extra: Any
    ) -> None:
        """Write the job's files (``write``) and record it done; a write error fails it, a full disk stops the batch.

        ``start``: ``time.perf_counter()`` when the job began, for its total seconds.
        """
        save_start = time.perf_counter()
        try:
            write()
        except OSError as exc:
            self.fail(job, f"cannot write {job.output}: {exc.strerror or exc}")
            if exc.errno in STOP_ERRNOS:
                raise BatchStopped(f"cannot write {job.output}: {exc.strerror}") from exc
            return
        end = time.perf_counter()
        seconds = {**timings, "save": end - save_start, "total": end - start}
        self.summary.done += 1
        self.summary.outputs.append(job.output)
        self.record(job, "done", seconds=seconds, **extra)
        logger.info("item %d: %s in %.1f s (seed %d)", job.index, job.output, seconds["total"], job.settings.seed)

    def fail(self, job: Job, error: str, *, exc_info: BaseException | None = None, **extra: Any) -> None:
        self.summary.failed += 1
        logger.error("item %d (line %d) failed: %s", job.index, job.line, error, exc_info=exc_info)
        self.record(job, "failed", error=error, **extra)

    def stop(self, stop: BatchStopped, total: int) -> None:
        """The batch stopped: the items of ``total`` not settled are counted as not reached."""
        s = self.summary
        s.stop_error = str(stop)
        s.not_reached = total - s.done - s.skipped - s.failed
        logger.error("batch stopped: %s; %d items not reached", stop, s.not_reached)

    def record(
        self,
        job: Job,
        status: str,
        *,
        error: str | None = None,
        seconds: Mapping[str, float] | None = None,
        step: int | None = None,
        expert: str | None = None,
        recovered: bool = False,
        **extra: Any,
    ) -> None:
        """One manifest line; ``extra`` adds what a runner knows besides (the Ray worker that made the item)."""
        record = {
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "index": job.index,
            "id": job.item_id,
            "line": job.line,
            "status": status,
            "output": str(job.output) if job.output else None,
            "seed": job.settings.seed if job.settings else None,
            "settings": asdict(job.settings) if job.settings else None,
            "loras": lora_record(job.loras),
            "seconds": {k: round(v, 4) for k, v in seconds.items()} if seconds else None,
            "error": error,
            "step": step,
            "expert": expert,
            "recovered": recovered,
            **extra,
        }
        try:
            self.manifest.append(record)
        except OSError as exc:
            raise BatchStopped(f"cannot write the manifest {self.manifest.path}: {exc.strerror or exc}") from exc

    def recorded_outputs(self) -> set[tuple[str, str, str]]:
        """(output, settings, LoRAs) of every ``done`` record: what an earlier run finished."""
        return {
            (
                os.path.abspath(r["output"]),
                json.dumps(r.get("settings"), sort_keys=True),
                json.dumps(r.get("loras", lora_record([])), sort_keys=True),
            )
            for r in self.manifest.records()
            if r.get("status") == "done" and isinstance(r.get("output"), str)
        }


def job_key(job: Job) -> tuple[str, str, str]:
    """What a ``done`` record must match for the job's output to count as made: path, settings, LoRAs."""
    settings = json.dumps(asdict(job.settings), sort_keys=True)
    return os.path.abspath(job.output), settings, json.dumps(lora_record(job.loras), sort_keys=True)
