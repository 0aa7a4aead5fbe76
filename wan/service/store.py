"""The job table: SQLite in the service's folder, the one record of what was asked and what became of it.

A job is committed (fsynced, WAL) before the client hears 202, so a crash after the answer cannot
lose it. The worker takes jobs oldest first; a job that was running when the process died goes back
to the queue on the next start. Every state change is one transaction that also appends to an event
log, so "completed exactly once" is a fact one can count, not a hope.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DB_NAME = "jobs.sqlite3"
QUEUED, IN_PROGRESS, COMPLETED, FAILED, CANCELLED = "queued", "in_progress", "completed", "failed", "cancelled"
FINISHED = (COMPLETED, FAILED, CANCELLED)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order: the queue's order
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    request TEXT NOT NULL,   -- the body's flags (JSON)
    settings TEXT NOT NULL,  -- resolved GenerationSettings (JSON)
    engine TEXT NOT NULL,    -- per-job model flags: preset, LoRA files (JSON)
    output TEXT,             -- the video's file name in the videos folder, once completed
    result TEXT,             -- what the sidecar says of the run (JSON), once completed
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    time REAL NOT NULL,
    event TEXT NOT NULL      -- queued, started, interrupted, completed, failed, cancelled, deleted
);
"""


class QueueFull(Exception):
    """The queue holds its limit of waiting jobs (HTTP 429)."""


@dataclass
class JobRecord:
    """One row of the job table, JSON columns decoded."""

    id: str
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    cancel_requested: bool
    request: dict[str, Any]
    settings: dict[str, Any]
    engine: dict[str, Any]
    output: str | None
    result: dict[str, Any] | None
    error: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        def decoded(name: str) -> Any:
            return None if row[name] is None else json.loads(row[name])

        return cls(
            id=row["id"],
            status=row["status"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            attempts=row["attempts"],
            cancel_requested=bool(row["cancel_requested"]),
            request=decoded("request"),
            settings=decoded("settings"),
            engine=decoded("engine"),
            output=row["output"],
            result=decoded("result"),
            error=row["error"],
        )


class JobStore:
    """Thread-safe access to the job table (one connection, serialised by a lock; writes are short)."""

    def __init__(self, folder: Path):
        self.path = folder / DB_NAME
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before the 202 goes out
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _event(self, db: sqlite3.Connection, job_id: str, event: str) -> None:
        db.execute("INSERT INTO events (job_id, time, event) VALUES (?, ?, ?)", (job_id, time.time(), event))

    # ------------------------------------------------------------------------------- writes
    def add(self, request: dict, settings: dict, engine: dict, max_queue: int) -> JobRecord:
        """Queue a job, unless ``max_queue`` jobs already wait."""
        job_id = f"video_{secrets.token_hex(12)}"
        with self._transaction() as db:
            (waiting,) = db.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (QUEUED,)).fetchone()
            if waiting >= max_queue:
                raise QueueFull(f"the queue holds {waiting} jobs, its limit; retry when some have run")
            db.execute(
                "INSERT INTO jobs (id, status, created_at, request, settings, engine) VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, QUEUED, time.time(), json.dumps(request), json.dumps(settings), json.dumps(engine)),
            )
            self._event(db, job_id, QUEUED)
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRecord.from_row(row)

    def recover(self) -> list[str]:
        """At start: jobs a dead process was running go back to the queue (a cancel it was asked for wins)."""
        with self._transaction() as db:
            rows = db.execute("SELECT id, cancel_requested FROM jobs WHERE status = ?", (IN_PROGRESS,)).fetchall()
            for row in rows:
                status = CANCELLED if row["cancel_requested"] else QUEUED
                finished = time.time() if status == CANCELLED else None
                db.execute("UPDATE jobs SET status = ?, finished_at = ? WHERE id = ?", (status, finished, row["id"]))
                self._event(db, row["id"], "interrupted")
                if status == CANCELLED:
                    self._event(db, row["id"], CANCELLED)
        return [row["id"] for row in rows if not row["cancel_requested"]]

    def claim_next(self) -> JobRecord | None:
        """The oldest queued job, now marked in progress; None when the queue is empty."""
        with self._transaction() as db:
            rows = db.execute(
                "UPDATE jobs SET status = ?, started_at = ?, attempts = attempts + 1 WHERE seq = "
                "(SELECT seq FROM jobs WHERE status = ? ORDER BY seq LIMIT 1) RETURNING *",
                (IN_PROGRESS, time.time(), QUEUED),
            ).fetchall()  # all of it: a statement with unread rows keeps the transaction from committing
            row = rows[0] if rows else None
            if row is not None:
                self._event(db, row["id"], "started")
        return None if row is None else JobRecord.from_row(row)

    def finish(
        self,
        job_id: str,
        status: str,
        *,
        output: str | None = None,
        result: dict | None = None,
        error: str | None = None,
    ) -> bool:
        """Move a running job to ``status`` (completed, failed, cancelled); False if it was not running."""
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, output = ?, result = ?, error = ? "
                "WHERE id = ? AND status = ?",
                (
                    status,
                    time.time(),
                    output,
                    None if result is None else json.dumps(result),
                    error,
                    job_id,
                    IN_PROGRESS,
                ),
            ).rowcount
            if changed:
                self._event(db, job_id, status)
        return bool(changed)

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued job at once, or ask a running one to stop; returns the status after, None if unknown."""
        with self._transaction() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            if row["status"] == QUEUED:
                db.execute("UPDATE jobs SET status = ?, finished_at = ? WHERE id = ?", (CANCELLED, time.time(), job_id))
                self._event(db, job_id, CANCELLED)
                return CANCELLED
            if row["status"] == IN_PROGRESS:
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            return row["status"]

    def delete(self, job_id: str) -> bool:
        """Forget a finished job (its files are the caller's to remove first)."""
        with self._transaction() as db:
            changed = db.execute(
                f"DELETE FROM jobs WHERE id = ? AND status IN ({', '.join('?' * len(FINISHED))})", (job_id, *FINISHED)
            ).rowcount
            if changed:
                self._event(db, job_id, "deleted")
        return bool(changed)

    # ------------------------------------------------------------------------------- reads
    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else JobRecord.from_row(row)

    def page(self, limit: int, after: str | None = None) -> tuple[list[JobRecord], bool]:
        """Newest first, ``limit`` at a time, starting below the job ``after``; and whether more follow."""
        with self._lock:
            below = self._db.execute("SELECT seq FROM jobs WHERE id = ?", (after,)).fetchone() if after else None
            if after and below is None:
                raise KeyError(after)
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                (below["seq"] if below else 2**62, limit + 1),
            ).fetchall()
        return [JobRecord.from_row(r) for r in rows[:limit]], len(rows) > limit

    def queued_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (QUEUED,)).fetchone()[0]

    def events(self, job_id: str | None = None) -> list[tuple[str, str]]:
        """(job id, event) in order: the audit trail tests and operators count."""
        with self._lock:
            query = "SELECT job_id, event FROM events" + (" WHERE job_id = ?" if job_id else "") + " ORDER BY seq"
            return [tuple(r) for r in self._db.execute(query, (job_id,) if job_id else ())]
