"""Output paths: suffix and write checks, claims and temporary names.

Torch-free, so a bad output path fails in milliseconds, before any heavy import. A process that
writes an output holds its claim (``claim_output``), so two processes never write, or clean up, the
same file; the writers in ``wan.video`` go through a temporary file beside the target.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from wan.errors import ConfigError

VIDEO_SUFFIXES = (".mp4", ".png")
TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[0-9a-f]{12}\.tmp\.(mp4|png|json)$")
"""``atomic_path``'s temporary files: ``.<target file name>.<random>.tmp.<suffix>``."""


class OutputError(ConfigError):
    """The output path cannot be written (one line, exit code 2)."""


def writable_target_problem(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (created on write if missing), or ``None``; leaves nothing behind
    (a probe file is made and removed at once)."""
    existing = Path(os.path.abspath(folder))
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    try:  # the mode bits can say yes where no file can be made (/proc, a read-only mount, as root)
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as exc:
        return f"{existing} takes no new files ({exc.strerror})"
    return None


def check_output_path(path: str | Path) -> Path:
    """Fail early (before loading a model) if ``path`` has an unsupported suffix or cannot be written."""
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise OutputError(f"save_file {path} must end in .mp4 (video) or .png (frame grid)")
    if path.is_dir():
        raise OutputError(f"save_file {path} is a folder; give a file name ending in .mp4 or .png")
    problem = writable_target_problem(path.parent)
    if problem:
        raise OutputError(f"save_file {path} cannot be written: {problem}")
    return path


@contextmanager
def claim_output(path: Path, *, wait: bool = False) -> Iterator[bool]:
    """Hold the claim on writing ``path``: yields False if another process holds it (``wait``: block until free).

    The claim is an flock on ``.<name>.lock`` beside ``path``: the kernel drops it when its process
    dies, even by SIGKILL, so a claim is never stale. The lock file is removed on release; whoever
    locks a file that was meanwhile removed tries again on the new one, so one process at a time
    holds the claim. Whoever gets it must re-check whether the output is already complete.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path.parent} cannot be created: {exc.strerror}; choose a writable folder") from exc
    lock = path.parent / f".{path.name}.lock"
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # e.g. a folder of /proc: writable by its mode bits, yet no file can be made
            raise OutputError(f"{path} cannot be written: {exc.strerror}; choose a writable folder") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                yield False
                return
            raise
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder before us removed this lock file; lock the current one
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        yield True
    finally:
        os.unlink(lock)
        os.close(fd)


def temp_files(path: Path) -> list[Path]:
    """Temporary files that ``atomic_path`` makes for ``path`` or for its sidecar ``<name>.json``."""
    if not path.parent.is_dir():
        return []
    targets = {path.name, f"{path.name}.json"}
    return [
        p
        for p in path.parent.glob(f".{glob.escape(path.name)}*.tmp.*")
        if (m := TEMP_NAME.match(p.name)) and m["target"] in targets
    ]
