"""Video and sidecar output, written atomically: a complete file or none, never half of one.

Every writer goes to a temporary file in the destination folder and renames it into place, so a
kill, a signal, a full disk or an encoder error at any moment leaves no partial output behind (a
signal is raised as an exception by ``generate.py``, so the cleanup runs; only SIGKILL can leave a
temporary file, which the next batch run on that folder removes). A process that writes an output
holds its claim (``claim_output``), so two processes never write, or clean up, the same file.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import math
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from wan.config import ConfigError

VIDEO_SUFFIXES = (".mp4", ".png")
TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[0-9a-f]{12}\.tmp\.(mp4|png|json)$")
"""``atomic_path``'s temporary files: ``.<target file name>.<random>.tmp.<suffix>``."""


class OutputError(ConfigError):
    """The output path cannot be written (one line, exit code 2)."""


def writable_target_problem(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (created on write if missing), or ``None``; creates nothing."""
    existing = Path(os.path.abspath(folder))
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
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
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
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


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[3, F, H, W] in [-1, 1] -> [F, H, W, 3] uint8."""
    frames = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).contiguous().cpu().numpy()


def frame_grid(frames: np.ndarray, columns: int | None = None) -> np.ndarray:
    """Tile [F, H, W, 3] frames into one picture, row by row."""
    count, height, width, channels = frames.shape
    columns = columns or min(count, 8)
    rows = math.ceil(count / columns)
    grid = np.zeros((rows * height, columns * width, channels), dtype=frames.dtype)
    for i, frame in enumerate(frames):
        r, c = divmod(i, columns)
        grid[r * height : (r + 1) * height, c * width : (c + 1) * width] = frame
    return grid


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The name is chosen before any file exists, so an exception or signal at any point removes
    whatever was written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp{path.suffix}"
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_mp4(frames: np.ndarray, path: str | Path, fps: int) -> None:
    """H.264 (libx264, yuv420p) through imageio-ffmpeg's bundled ffmpeg."""
    import imageio_ffmpeg  # only mp4 needs ffmpeg; PNG output works without it

    count, height, width, _ = frames.shape
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            quality=8,
            macro_block_size=1,
            ffmpeg_log_level="error",
        )
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()


def write_png(image: np.ndarray, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, image, extension=".png")


def save_video(video: torch.Tensor, path: str | Path, fps: int) -> Path:
    """Write [3, F, H, W] in [-1, 1] as an mp4, or as a PNG frame grid if ``path`` ends in .png."""
    path = Path(path)
    frames = to_uint8_frames(video)
    if path.suffix.lower() == ".png":
        write_png(frame_grid(frames), path)
    else:
        write_mp4(frames, path, fps)
    return path


def save_json(data: dict, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_video(path: str | Path) -> np.ndarray:
    """Decode an mp4 to [F, H, W, 3] uint8 (raises if the file is not a complete video)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3) for buf in reader]
    return np.stack(frames) if frames else np.zeros((0, height, width, 3), dtype=np.uint8)
