"""Batch generation that loses nothing: prompt files, resume, a manifest, per-item failures.

A batch of hundreds of videos on rented GPUs has to survive a kill, a bad prompt and a full disk
without losing finished work or leaving broken files. So:

- outputs are written atomically (``wan.video``): a kill leaves a complete video or none;
- every attempt appends one fsynced line to a JSONL manifest, after the video and its sidecar;
- a re-run of the same command skips an item only if its video decodes to the expected frames
  and its sidecar holds the item's settings (verified, not just present); a verified video whose
  manifest line was lost to a kill is recorded as done without being generated again;
- one item's failure (bad input, NaN/Inf, out of memory) is recorded and the batch goes on; a
  full or read-only disk or an unwritable manifest stops it cleanly, since every later item
  would fail the same way;
- each item is claimed (``wan.video.claim_output``) while it is made, so two batch processes on
  one folder never make the same item twice; each waits at the end for the items the other holds.

Items are named by the same flags as the command line (``generate.py``), which fills in any
flag an item leaves out.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from wan.config import TaskConfig
from wan.errors import ConfigError, NonFiniteLatentError, one_line
from wan.levers.cache import counting_computed
from wan.lora import FLAG_EXPERTS, LoraFile, check_loras, lora_record, lora_specs
from wan.paths import TEMP_NAME, check_output_path, claim_output, temp_files
from wan.settings import GenerationSettings, settings_from_flags
from wan.text2video import GenerationResult, WanT2V
from wan.validation import SEED_MAX
from wan.video import frame_grid, read_video, save_json, save_video

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
MAX_EXIT_CODE = 125
"""Exit codes above 125 mean "killed by a signal" or "not runnable" to shells; counts are capped here."""

ITEM_FLAGS: dict[str, tuple[type, ...]] = {
    "prompt": (str,),
    "negative_prompt": (str,),
    "base_seed": (int,),
    "size": (str,),
    "frame_num": (int,),
    "sample_steps": (int,),
    "sample_shift": (int, float),
    "sample_solver": (str,),
    "sample_guide_scale": (int, float),
    "enable_half_frame_generation": (bool,),
    "half_frame_steps": (str,),
    "half_frame_positions": (str,),
    "frame_completion": (str,),
    "enable_improved_frame_completion": (bool,),
    "cfg_truncate_steps": (int,),
    "cfg_truncate_high_noise_steps": (int,),
    "lora": (str, list),
    "lora_high": (str, list),
    "lora_low": (str, list),
    "save_file": (str,),
}
"""Keys a JSONL item may set: the generation flags by their CLI names, with the JSON types they take."""
ITEM_ALIASES = {"seed": "base_seed"}
_KINDS = {
    (str,): "a string",
    (int,): "an integer",
    (int, float): "a number",
    (bool,): "true or false",
    (str, list): '"FILE[:SCALE]" or a list of them',
}
GENERATION_FLAGS = tuple(name for name in ITEM_FLAGS if name != "save_file")
"""The CLI flags (argparse dests) that decide a video; items default to the command line's values."""

STOP_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
"""Write errors that every later item would hit too: the batch stops instead of failing them all."""


class BatchStopped(Exception):
    """The batch cannot go on (full disk, unwritable manifest); finished items are kept."""


# ----------------------------------------------------------------------------------- items
@dataclass
class BatchItem:
    """One line of a prompt file: the flags it sets, or why it cannot be run."""

    index: int  # position among the file's items (blank and # lines do not count)
    line: int  # line number in the file, for messages
    item_id: str  # "<index>_<prompt slug>": stable across re-runs, the default output name
    flags: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def slugify(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text)[:limit].strip("_") or "video"


def read_prompt_file(path: Path) -> list[BatchItem]:
    """Items of a prompt file: a plain line is a prompt, a line starting with ``{`` a JSON item.

    A malformed or invalid line becomes an item with an error (recorded as failed, the batch goes
    on); a file that cannot be read or has no items is a batch-level ``ConfigError``.
    """
    text = read_text_file(path)
    items: list[BatchItem] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            items.append(parse_item(len(items), number, line))
    if not items:
        raise ConfigError(f"prompt file {path} has no prompts (one per line, or JSON objects)")
    return items


def read_text_file(path: Path) -> str:
    """A text file as editors write it: UTF-8 with or without a byte-order mark, any line ends; else one error."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"prompt file {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"prompt file {path} is a folder, not a file") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read prompt file {path}: {exc.strerror or exc}") from exc
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"prompt file {path} is UTF-16; save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"prompt file {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8"
        ) from exc
    if "\x00" in text:
        raise ConfigError(f"prompt file {path} holds NUL bytes: not a text file")
    return text


def parse_item(index: int, number: int, line: str) -> BatchItem:
    if not line.startswith("{"):
        return BatchItem(index, number, f"{index:04d}_{slugify(line)}", {"prompt": line})
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        return BatchItem(index, number, f"{index:04d}_invalid", error=f"not valid JSON ({exc.msg}, column {exc.colno})")
    prompt = data.get("prompt")
    item = BatchItem(index, number, f"{index:04d}_{slugify(prompt if isinstance(prompt, str) else '')}")
    try:
        item.flags = item_flags(data)
    except ConfigError as exc:
        item.error = str(exc)
    return item


def item_flags(data: Mapping[str, Any]) -> dict[str, Any]:
    """Check a JSON item's keys and value types (``wan.validation`` checks the values); ``null`` means
    "the command line's value"."""
    flags: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for key, value in data.items():
        name = ITEM_ALIASES.get(key, key)
        if name not in ITEM_FLAGS:
            raise ConfigError(f"unknown key {key!r}; items take: seed, {', '.join(ITEM_FLAGS)}")
        if name in seen:
            raise ConfigError(f"{key!r} and {seen[name]!r} both set the seed; keep one")
        seen[name] = key
        if value is None:
            continue
        types = ITEM_FLAGS[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ConfigError(f"{key!r} must be {_KINDS[types]}, got {json.dumps(value)}")
        if name in FLAG_EXPERTS:  # a LoRA flag: one string or a list, as repeated flags give
            value = [value] if isinstance(value, str) else value
            if not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{key!r} must be {_KINDS[types]}, got {json.dumps(value)}")
        flags[name] = value
    return flags


def item_seed(index: int, prompt: str, base_seed: int) -> int:
    """A fixed seed for an item without one, so a re-run makes the same video: base_seed + index
    (modulo 2**32), or (base_seed -1) a hash of index and prompt."""
    if base_seed >= 0:
        return (base_seed + index) % (SEED_MAX + 1)  # a valid seed however large base_seed is
    digest = hashlib.sha256(f"{index}\n{prompt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass
class Job:
    """An item resolved against the command line: its settings and output, or its error."""

    index: int
    line: int
    item_id: str
    settings: GenerationSettings | None = None  # resolved (no None fields)
    output: Path | None = None
    error: str | None = None
    loras: list[LoraFile] = field(default_factory=list)  # fused before the item runs (checked, not yet applied)

    @property
    def lora_set(self) -> tuple[tuple[str, float, tuple[str, ...]], ...]:
        """What the item's weights are: items with equal sets share one loaded model."""
        return tuple((f.sha256, f.spec.scale, f.spec.experts) for f in self.loras)


def plan_jobs(items: list[BatchItem], defaults: Mapping[str, Any], config: TaskConfig, save_dir: Path) -> list[Job]:
    """Resolve and validate every item before the model loads; invalid items keep their error."""
    jobs: list[Job] = []
    owners: dict[str, int] = {}
    root = Path(os.path.abspath(save_dir))
    for item in items:
        job = Job(item.index, item.line, item.item_id, error=item.error)
        jobs.append(job)
        if job.error is not None:
            continue
        flags = {**defaults, **item.flags}
        seed = item.flags.get("base_seed", -1)
        if seed < 0:
            seed = item_seed(item.index, flags["prompt"] or "", defaults["base_seed"])
        try:
            job.settings = settings_from_flags(flags, seed).resolved(config)
            job.loras = check_loras(lora_specs(flags))
            output = save_dir / item.flags.get("save_file", f"{item.item_id}.mp4")
            job.output = check_output_path(output)
            absolute = Path(os.path.abspath(output))
            if not absolute.is_relative_to(root):
                raise ConfigError(f"save_file {output} is outside --save_dir {save_dir}; keep it inside")
            key = str(absolute).lower()  # names that differ only in case are one file on some file systems
            if key in owners:
                raise ConfigError(f"save_file {output} is already item {owners[key]}'s output")
            owners[key] = item.index
        except ConfigError as exc:
            job.error = str(exc)
    return jobs


def shard(jobs: list[Job], rank: int, world_size: int) -> list[Job]:
    """This rank's items under torchrun (item i goes to rank i % world_size): one video per GPU at a time."""
    return [job for job in jobs if job.index % world_size == rank]


# ----------------------------------------------------------------------------------- outputs
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


def video_is_complete(path: Path, settings: GenerationSettings, config: TaskConfig) -> bool:
    """The file decodes to ``frame_num`` frames of the item's size (png: a readable grid of them)."""
    if not path.is_file():
        return False
    width, height = config.parse_size(settings.size)
    try:
        if path.suffix.lower() == ".png":
            rows, columns, _ = frame_grid(np.zeros((settings.frame_num, 1, 1, 3), np.uint8)).shape
            return iio.imread(path).shape == (rows * height, columns * width, 3)
        return read_video(path).shape == (settings.frame_num, height, width, 3)
    except (OSError, RuntimeError, ValueError) as exc:
        logger.warning("%s is not a complete video (%s); it will be generated again", path, str(exc).splitlines()[0])
        return False


def output_is_complete(job: Job, config: TaskConfig) -> bool:
    """Verified, not just present: the sidecar has the item's settings and the video decodes fully."""
    try:
        meta = json.loads(sidecar_path(job.output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        meta.get("settings") == asdict(job.settings)
        and meta.get("loras", lora_record([])) == lora_record(job.loras)
        and video_is_complete(job.output, job.settings, config)
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


# ----------------------------------------------------------------------------------- manifest
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


# ----------------------------------------------------------------------------------- runner
@dataclass
class BatchSummary:
    done: int = 0  # generated in this run, or found verified with its manifest line lost
    skipped: int = 0  # complete from an earlier run
    failed: int = 0
    not_reached: int = 0  # left after the batch stopped
    stop_error: str | None = None
    outputs: list[Path] = field(default_factory=list)  # complete videos, in item order

    @property
    def exit_code(self) -> int:
        """0 when every item is complete, else how many are not (failed or not reached), capped at 125."""
        return min(self.failed + self.not_reached, MAX_EXIT_CODE)


class BatchRunner:
    """Runs jobs on one loaded model, recording each attempt; the model loads only if work is left."""

    def __init__(
        self,
        jobs: list[Job],
        config: TaskConfig,
        manifest: Manifest,
        context: Mapping[str, Any],
        *,
        progress: bool = True,
    ):
        self.jobs = jobs
        self.config = config
        self.manifest = manifest
        self.context = context
        self.progress = progress
        self.pipe: WanT2V | None = None
        self.pipe_loras: tuple | None = None  # the LoRA set fused into ``self.pipe``
        self.summary = BatchSummary()

    def run(self, load_pipe: Callable[[list[LoraFile]], WanT2V]) -> BatchSummary:
        """Record invalid and already complete items, then generate the rest; stop cleanly if writes fail.

        Items that another process (a second batch on the same folder) is making are left to it and
        waited for at the end; any it did not complete, this process makes.
        """
        remove_orphan_temp_files({job.output.parent for job in self.jobs if job.output})
        s = self.summary
        try:
            todo = self._triage()
            if todo:
                logger.info("%d of %d items to generate", len(todo), len(self.jobs))
                busy = self._generate_all(todo, load_pipe, wait=False)
                if busy:
                    logger.info("%d items are being made by another process; waiting for them", len(busy))
                    self._generate_all(busy, load_pipe, wait=True)
        except BatchStopped as stop:
            s.stop_error = str(stop)
            s.not_reached = len(self.jobs) - s.done - s.skipped - s.failed
            logger.error("batch stopped: %s; %d items not reached", stop, s.not_reached)
        logger.info("batch: %d done, %d skipped (complete earlier), %d failed", s.done, s.skipped, s.failed)
        return s

    def _triage(self) -> list[Job]:
        """Record what needs no model (invalid items, verified and recorded outputs); return the others."""
        recorded = self._recorded_outputs()
        todo: list[Job] = []
        for job in self.jobs:
            if job.error is not None:
                self._fail(job, job.error)
            elif self._key(job) in recorded and output_is_complete(job, self.config):
                self.summary.outputs.append(job.output)
                self.summary.skipped += 1
                self._record(job, "skipped")
            else:
                todo.append(job)
        return todo

    def _generate_all(self, jobs: list[Job], load_pipe: Callable[[list[LoraFile]], WanT2V], *, wait: bool) -> list[Job]:
        """Claim and make each job; return the jobs another process holds, or with ``wait`` wait for them.

        Items go in groups of one LoRA set, base model first. The model loads, with the group's LoRAs
        fused and then the speed levers applied, at a group's first item to generate: fused (or
        quantised, compiled) weights cannot be unfused exactly, so each LoRA set gets a fresh load.
        """
        busy: list[Job] = []
        refused: dict[tuple, str] = {}
        groups: dict[tuple, list[Job]] = {}
        for job in sorted(jobs, key=lambda j: bool(j.loras)):  # stable: item order within a group
            groups.setdefault(job.lora_set, []).append(job)
        with (
            logging_redirect_tqdm() if self.progress else nullcontext(),  # log lines above the bars
            tqdm(total=len(jobs), desc="videos", unit="video", disable=not self.progress, dynamic_ncols=True) as bar,
        ):
            for lora_set, group in groups.items():
                for job in group:
                    bar.update()
                    with claim_output(job.output, wait=wait) as claimed:
                        if not claimed:
                            busy.append(job)
                            continue
                        for path in temp_files(job.output):  # a killed writer's; nobody else writes them now
                            path.unlink(missing_ok=True)
                        if output_is_complete(job, self.config):
                            self._settle_complete(job)
                            continue
                        if lora_set in refused:
                            self._fail(job, refused[lora_set])
                            continue
                        if self.pipe is None or self.pipe_loras != lora_set:
                            try:
                                self._load(load_pipe, job.loras, lora_set)
                            except ConfigError as exc:  # a LoRA the experts cannot take: its items fail alone
                                refused[lora_set] = one_line(exc)
                                self._fail(job, refused[lora_set])
                                continue
                        self._generate(self.pipe, job)
                    bar.set_postfix(done=self.summary.done, failed=self.summary.failed)
        return busy

    def _load(self, load_pipe: Callable[[list[LoraFile]], WanT2V], loras: list[LoraFile], lora_set: tuple) -> None:
        """The model with ``loras`` fused; the previous one's memory is freed before the new one loads."""
        self.pipe, self.pipe_loras = None, None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.pipe = load_pipe(loras)
        self.pipe_loras = lora_set

    def _settle_complete(self, job: Job) -> None:
        """A verified output found once claimed: made by another process, or by a run killed before its
        manifest line (then it is recorded as done, not made again)."""
        self.summary.outputs.append(job.output)
        if self._key(job) in self._recorded_outputs():
            self.summary.skipped += 1
            self._record(job, "skipped")
        else:
            logger.info("item %d: %s is complete but unrecorded; recorded as done", job.index, job.output)
            self.summary.done += 1
            self._record(job, "done", recovered=True)

    def _generate(self, pipe: WanT2V, job: Job) -> None:
        start = time.perf_counter()
        try:
            with counting_computed(pipe) as computed:
                result = pipe.generate(job.settings, progress=self.progress)
        except NonFiniteLatentError as exc:
            return self._fail(job, one_line(exc), step=exc.step, expert=exc.expert)
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            s = job.settings
            return self._fail(job, f"out of memory at {s.size}, {s.frame_num} frames: {one_line(exc)}")
        except ConfigError as exc:  # settings the model refuses, e.g. a size its patches do not divide
            return self._fail(job, one_line(exc))
        except Exception as exc:  # a model error on one item must not end the batch; keep its traceback
            return self._fail(job, one_line(exc), exc_info=exc)
        save_start = time.perf_counter()
        item = {"index": job.index, "id": job.item_id, "line": job.line}
        try:
            context = {**self.context, "loras": lora_record(job.loras), "item": item}
            if computed:
                context["computed_forwards"] = computed
            write_outputs(result, job.output, self.config.fps, context)
        except OSError as exc:
            self._fail(job, f"cannot write {job.output}: {exc.strerror or exc}")
            if exc.errno in STOP_ERRNOS:
                raise BatchStopped(f"cannot write {job.output}: {exc.strerror}") from exc
            return None
        end = time.perf_counter()
        seconds = {**result.timings, "save": end - save_start, "total": end - start}
        self.summary.done += 1
        self.summary.outputs.append(job.output)
        self._record(job, "done", seconds=seconds)
        logger.info("item %d: %s in %.1f s (seed %d)", job.index, job.output, seconds["total"], job.settings.seed)
        return None

    def _fail(self, job: Job, error: str, *, exc_info: BaseException | None = None, **extra: Any) -> None:
        self.summary.failed += 1
        logger.error("item %d (line %d) failed: %s", job.index, job.line, error, exc_info=exc_info)
        self._record(job, "failed", error=error, **extra)

    def _record(
        self,
        job: Job,
        status: str,
        *,
        error: str | None = None,
        seconds: Mapping[str, float] | None = None,
        step: int | None = None,
        expert: str | None = None,
        recovered: bool = False,
    ) -> None:
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
        }
        try:
            self.manifest.append(record)
        except OSError as exc:
            raise BatchStopped(f"cannot write the manifest {self.manifest.path}: {exc.strerror or exc}") from exc

    def _recorded_outputs(self) -> set[tuple[str, str, str]]:
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

    @staticmethod
    def _key(job: Job) -> tuple[str, str, str]:
        settings = json.dumps(asdict(job.settings), sort_keys=True)
        return os.path.abspath(job.output), settings, json.dumps(lora_record(job.loras), sort_keys=True)
