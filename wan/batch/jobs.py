"""Jobs: prompt-file items resolved against the command line, checked before any model loads.

Each item gets its settings (with a fixed seed, so a re-run makes the same video), its LoRAs and its
output path; an item that cannot run keeps the one-line reason. Runners (one process, torchrun
shards, Ray workers) take the same jobs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wan.batch.prompt_file import BatchItem
from wan.config import TaskConfig
from wan.errors import ConfigError
from wan.lora import LoraFile, check_loras, lora_specs
from wan.paths import check_output_path
from wan.settings import GenerationSettings, settings_from_flags
from wan.validation import SEED_MAX


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

    @property
    def item(self) -> dict[str, Any]:
        """Where the item comes from, as its sidecar records it."""
        return {"index": self.index, "id": self.item_id, "line": self.line}


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
            job.loras = check_loras(lora_specs(flags, config))
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


def by_lora_set(jobs: list[Job]) -> list[Job]:
    """Base-model items first, then each LoRA set's, item order kept within a set: one load per set."""
    groups: dict[tuple, list[Job]] = {}
    for job in sorted(jobs, key=lambda j: bool(j.loras)):  # stable: item order within a group
        groups.setdefault(job.lora_set, []).append(job)
    return [job for group in groups.values() for job in group]
