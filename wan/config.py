"""Task configs: the sampling settings of a task, read from ``configs/<task>.json``.

The architecture is not here: as in the official release it comes from the checkpoint's own
config, so any task's sampling settings run on any compatible checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from wan.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
DEFAULT_TASK = "t2v-tiny"
TASK_KINDS = ("t2v", "i2v", "ti2v")
"""t2v: text only; i2v: an image is required (mask + image latent as extra input channels);
ti2v: text only, or an image as the first latent frame (per-token timesteps)."""
HIGH = "high_noise"
LOW = "low_noise"
"""The two experts' names in checkpoints, plans, timings and sidecars (a dense model has only HIGH)."""


@dataclass(frozen=True)
class TaskConfig:
    task: str
    description: str
    sizes: tuple[str, ...]
    default_size: str
    frame_num: int
    fps: int
    vae_stride: tuple[int, int, int]
    patch_size: tuple[int, int, int]
    sample_solver: str
    sample_steps: int
    sample_shift: float
    boundary: float | None  # None: one expert (no switch), e.g. ti2v-5B
    guide_scale_high: float
    guide_scale_low: float
    num_train_timesteps: int
    text_len: int
    default_ckpt_dir: str | None
    negative_prompt: str
    kind: str = "t2v"

    @property
    def experts(self) -> int:
        """Two experts (high-noise / low-noise) when the task has a switch boundary, else one."""
        return 1 if self.boundary is None else 2

    def parse_size(self, size: str | None) -> tuple[int, int]:
        """Return (width, height) for an official ``W*H`` string, refusing sizes the task lacks."""
        size = size or self.default_size
        if size not in self.sizes:
            raise ConfigError(
                f"size {size!r} is not supported by task {self.task}; use one of: {', '.join(self.sizes)}"
            )
        width, height = (int(v) for v in size.split("*"))
        return width, height

    def ckpt_dir(self) -> Path | None:
        """The task's shipped checkpoint folder, if it has one (relative paths are from the repo root)."""
        if self.default_ckpt_dir is None:
            return None
        path = Path(self.default_ckpt_dir)
        return path if path.is_absolute() else REPO_ROOT / path


def available_tasks() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_task_config(task: str = DEFAULT_TASK) -> TaskConfig:
    """A task by name (``configs/<task>.json``), or a task config file by path (``my_task.json``).

    A relative ``default_ckpt_dir`` in a config file given by path is taken from the file's folder.
    """
    if task.endswith(".json"):
        return _read_task_file(Path(task))
    path = CONFIG_DIR / f"{task}.json"
    if not path.is_file():
        raise ConfigError(f"unknown task {task!r}; choose one of: {', '.join(available_tasks())}")
    return _task_config(json.loads(path.read_text(encoding="utf-8")))


def _read_task_file(path: Path) -> TaskConfig:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("default_ckpt_dir") and not Path(raw["default_ckpt_dir"]).is_absolute():
            raw["default_ckpt_dir"] = str(path.resolve().parent / raw["default_ckpt_dir"])
        return _task_config(raw)
    except FileNotFoundError as exc:
        raise ConfigError(f"task config {path} does not exist; --task takes a name or a .json file") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"task config {path} is not valid: {str(exc).splitlines()[0]}") from exc


def _task_config(raw: dict) -> TaskConfig:
    """JSON lists become the config's tuples."""
    if raw.get("kind", "t2v") not in TASK_KINDS:
        raise ValueError(f"kind {raw['kind']!r} is not one of {', '.join(TASK_KINDS)}")
    return TaskConfig(
        **{
            **raw,
            "sizes": tuple(raw["sizes"]),
            "vae_stride": tuple(raw["vae_stride"]),
            "patch_size": tuple(raw["patch_size"]),
        }
    )
