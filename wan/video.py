"""Video and sidecar output, written atomically: a complete file or none, never half of one (claims and
path checks: ``wan.paths``).

Every writer goes to a temporary file in the destination folder and renames it into place, so a
kill, a signal, a full disk or an encoder error at any moment leaves no partial output behind (a
signal is raised as an exception by ``generate.py``, so the cleanup runs; only SIGKILL can leave a
temporary file, which the next batch run on that folder removes). A process that writes an output
holds its claim (``claim_output``), so two processes never write, or clean up, the same file.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch


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
