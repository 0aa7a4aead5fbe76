"""A video's files: its name, its sidecar, written atomically, and the check that both are complete.

A re-run must be able to tell a finished video from one a kill cut short, so the video and its
sidecar ``<name>.<suffix>.json`` are each written atomically (``wan.video``), video first, and a video
counts as complete only if its sidecar holds the run's settings and it decodes to every frame.
Used by the single-video CLI, every batch runner and the Ray driver (which writes what its workers
encoded, on the driver's machine).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import imageio.v3 as iio
import numpy as np
import torch

from wan.config import TaskConfig
from wan.errors import ConfigError
from wan.lora import LoraFile, lora_record
from wan.paths import TEMP_NAME, claim_output
from wan.plan import RunPlan, video_size
from wan.settings import GenerationSettings
from wan.video import atomic_path, frame_grid, read_video, save_json, save_video

if TYPE_CHECKING:
    from wan.text2video import GenerationResult

logger = logging.getLogger(__name__)


def check_writable_dir(folder: Path, flag: str) -> Path:
    """Create ``folder`` and prove it takes a file, before any model is loaded."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {folder} is not writable ({exc.strerror or exc}); choose another {flag}") from exc
    return folder


def sidecar_path(video_path: Path) -> Path:
    """``clip.mp4.json``: from the full name, so ``clip.mp4`` and ``clip.png`` never share a sidecar."""
    return video_path.with_name(f"{video_path.name}.json")


def sidecar(result: GenerationResult, video_path: Path, context: Mapping[str, Any]) -> dict[str, Any]:
    """Everything needed to reproduce and account for a video; ``context`` adds task, checkpoint, options."""
    return {
        **context,
        "save_file": str(video_path),
        "settings": asdict(result.settings),
        "steps": {"high_noise": result.high_noise_steps, "low_noise": result.low_noise_steps},
        "forwards": result.forwards,
        "tokens": result.tokens,
        **({"computed_forwards": result.computed_forwards} if result.computed_forwards else {}),
        "seconds": {k: round(v, 4) for k, v in result.timings.items()},
    }


def write_outputs(result: GenerationResult, path: Path, fps: int, context: Mapping[str, Any]) -> None:
    """Video, then sidecar, each atomic; an old sidecar goes first, so a sidecar always describes
    the video beside it (what a re-run checks before skipping)."""
    sidecar_path(path).unlink(missing_ok=True)
    save_video(result.video, path, fps)
    save_json(sidecar(result, path, context), sidecar_path(path))


def encode_video(video: torch.Tensor, suffix: str, fps: int) -> bytes:
    """The file ``save_video`` would write for ``suffix`` (.mp4 or .png), as bytes to send elsewhere."""
    with tempfile.TemporaryDirectory(prefix="wan-encode-") as folder:
        return save_video(video, Path(folder) / f"video{suffix}", fps).read_bytes()


def write_encoded(data: bytes, record: Mapping[str, Any], path: Path) -> None:
    """``write_outputs`` for a video encoded elsewhere (``encode_video``) and its sidecar record."""
    sidecar_path(path).unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    save_json(dict(record), sidecar_path(path))


def default_video_path(task: str, plan: RunPlan, save_dir: str | None) -> Path:
    """A name no other run picks: task, the video's size (an image's shape for image tasks), the prompt, the
    time to the microsecond and a random suffix; never an existing file (the run then claims it)."""
    width, height = plan.geometry.pixels
    slug = re.sub(r"[^A-Za-z0-9]+", "_", plan.settings.prompt)[:50].strip("_") or "video"
    while True:
        stamp = f"{datetime.now():%Y%m%d_%H%M%S_%f}_{secrets.token_hex(3)}"
        path = Path(save_dir or ".") / f"{task}_{width}x{height}_{slug}_{stamp}.mp4"
        if not path.exists():
            return path


def video_is_complete(path: Path, settings: GenerationSettings, config: TaskConfig) -> bool:
    """The file decodes to ``frame_num`` frames of the item's size (png: a readable grid of them); an image
    task's size follows its image (``wan.plan.video_size``)."""
    if not path.is_file():
        return False
    try:
        width, height = video_size(config, settings)
    except ConfigError:  # the image is gone or unreadable: the item cannot be verified, so it is made again
        return False
    try:
        if path.suffix.lower() == ".png":
            rows, columns, _ = frame_grid(np.zeros((settings.frame_num, 1, 1, 3), np.uint8)).shape
            return iio.imread(path).shape == (rows * height, columns * width, 3)
        return read_video(path).shape == (settings.frame_num, height, width, 3)
    except (OSError, RuntimeError, ValueError) as exc:
        logger.warning("%s is not a complete video (%s); it will be generated again", path, str(exc).splitlines()[0])
        return False


def output_is_complete(path: Path, settings: GenerationSettings, loras: Iterable[LoraFile], config: TaskConfig) -> bool:
    """Verified, not just present: the sidecar has these settings and LoRAs and the video decodes fully."""
    try:
        meta = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        meta.get("settings") == asdict(settings)
        and meta.get("loras", lora_record([])) == lora_record(loras)
        and video_is_complete(path, settings, config)
    )


def remove_orphan_temp_files(folders: set[Path]) -> None:
    """Temporary files that a killed run left behind: those whose output nobody holds a claim on."""
    for folder in folders:
        for path in folder.glob(".*.tmp.*"):
            match = TEMP_NAME.match(path.name)
            if not match:
                continue
            target = match["target"]
            video = folder / (target.removesuffix(".json") if target.endswith((".mp4.json", ".png.json")) else target)
            with claim_output(video) as claimed:
                if claimed:
                    logger.info("removing %s, left by an interrupted run", path)
                    path.unlink(missing_ok=True)
