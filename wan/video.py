"""Video and sidecar output, written atomically: a complete file or none, never half of one.

Every writer goes to a temporary file in the destination folder and renames it into place, so a
kill, a full disk or an encoder error at any moment leaves no partial output behind.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from wan.config import ConfigError

VIDEO_SUFFIXES = (".mp4", ".png")


class OutputError(ConfigError):
    """The output path cannot be written (one line, exit code 2)."""


def check_output_path(path: str | Path) -> Path:
    """Fail early (before loading a model) if ``path`` has an unsupported suffix or cannot be written."""
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise OutputError(f"--save_file {path} must end in .mp4 (video) or .png (frame grid)")
    if path.is_dir():
        raise OutputError(f"--save_file {path} is a folder; give a file name ending in .mp4 or .png")
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create output folder {folder}: {exc.strerror}; choose a writable --save_file"
        ) from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {folder} is not writable; choose a writable --save_file")
    return path


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
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; outputs are ordinary files
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
