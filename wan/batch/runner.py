"""The single-process runner: every job on one loaded model, each attempt recorded.

One item's failure (bad input, NaN/Inf, out of memory) is recorded and the batch goes on. Each item is
claimed (``wan.video.claim_output``) while it is made, so two batch processes on one folder never make
the same item twice; each waits at the end for the items the other holds. The model loads only if
work is left, once per LoRA set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from wan.batch.jobs import Job, by_lora_set
from wan.batch.manifest import BatchRecorder, BatchStopped, BatchSummary, Manifest
from wan.config import TaskConfig
from wan.errors import ConfigError, NonFiniteLatentError, one_line
from wan.levers.cache import counting_computed
from wan.lora import LoraFile, lora_record
from wan.outputs import output_is_complete, remove_orphan_temp_files, write_outputs
from wan.paths import claim_output, temp_files
from wan.text2video import GenerationResult, WanT2V

logger = logging.getLogger(__name__)


@dataclass
class Attempt:
    """What generating one item gave: its result, or the one-line reason it failed (``fields`` for the record)."""

    result: GenerationResult | None = None
    computed: dict[str, int] = field(default_factory=dict)  # forwards a step cache really ran
    error: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # step and expert of a NaN/Inf
    exc_info: BaseException | None = None  # an unexpected error's, for its traceback


def attempt(pipe: WanT2V, settings: Any, *, progress: bool) -> Attempt:
    """Generate one video; an item's own failure is returned, never raised, so the batch goes on."""
    try:
        with counting_computed(pipe) as computed:
            result = pipe.generate(settings, progress=progress)
    except NonFiniteLatentError as exc:
        return Attempt(error=one_line(exc), fields={"step": exc.step, "expert": exc.expert})
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        return Attempt(error=f"out of memory at {settings.size}, {settings.frame_num} frames: {one_line(exc)}")
    except ConfigError as exc:  # settings the model refuses, e.g. a size its patches do not divide
        return Attempt(error=one_line(exc))
    except Exception as exc:  # a model error on one item must not end the batch; keep its traceback
        return Attempt(error=one_line(exc), exc_info=exc)
    return Attempt(result=result, computed=computed)


def item_context(context: dict[str, Any], job: Job, computed: dict[str, int]) -> dict[str, Any]:
    """The sidecar's context for one item: the batch's, plus the item's LoRAs, origin and cache counts."""
    out = {**context, "loras": lora_record(job.loras), "item": job.item}
    if computed:
        out["computed_forwards"] = computed  # what the step cache ran of the result's forwards
    return out


@contextmanager
def claimed(job: Job, recorder: BatchRecorder, *, wait: bool) -> Iterator[bool | None]:
    """Hold the job's output claim. Yields True: make it; False: another process holds it; None: it was
    found complete (and recorded) once claimed."""
    with claim_output(job.output, wait=wait) as ok:
        if not ok:
            yield False
            return
        for path in temp_files(job.output):  # a killed writer's; nobody else writes them now
            path.unlink(missing_ok=True)
        if output_is_complete(job.output, job.settings, job.loras, recorder.config):
            recorder.settle_complete(job)
            yield None
            return
        yield True


def run_jobs(jobs: list[Job], recorder: BatchRecorder, make: Callable[[list[Job], bool], list[Job]]) -> BatchSummary:
    """The frame every runner shares: clean up, record what needs no model, ``make(todo, wait)`` the rest.

    ``make`` returns the jobs another process (a second batch on the same folder) holds; they are
    given to it again with ``wait`` at the end, and any the other process did not complete are made.
    """
    remove_orphan_temp_files({job.output.parent for job in jobs if job.output})
    s = recorder.summary
    try:
        todo = recorder.triage(jobs)
        if todo:
            logger.info("%d of %d items to generate", len(todo), len(jobs))
            busy = make(todo, False)
            if busy:
                logger.info("%d items are being made by another process; waiting for them", len(busy))
                make(busy, True)
    except BatchStopped as stop:
        recorder.stop(stop, len(jobs))
    logger.info("batch: %d done, %d skipped (complete earlier), %d failed", s.done, s.skipped, s.failed)
    return s


class BatchRunner:
    """Runs jobs on one loaded model, recording each attempt; the model loads only if work is left."""

    def __init__(
        self,
        jobs: list[Job],
        config: TaskConfig,
        manifest: Manifest,
        context: dict[str, Any],
        *,
        progress: bool = True,
    ):
        self.jobs = jobs
        self.config = config
        self.context = context
        self.progress = progress
        self.recorder = BatchRecorder(manifest, config)
        self.pipe: WanT2V | None = None
        self.pipe_loras: tuple | None = None  # the LoRA set fused into ``self.pipe``

    def run(self, load_pipe: Callable[[list[LoraFile]], WanT2V]) -> BatchSummary:
        """Record invalid and already complete items, then generate the rest; stop cleanly if writes fail."""
        return run_jobs(self.jobs, self.recorder, lambda todo, wait: self._generate_all(todo, load_pipe, wait=wait))

    def _generate_all(self, jobs: list[Job], load_pipe: Callable[[list[LoraFile]], WanT2V], *, wait: bool) -> list[Job]:
        """Claim and make each job; return the jobs another process holds, or with ``wait`` wait for them.

        Items go in groups of one LoRA set, base model first. The model loads, with the group's LoRAs
        fused and then the speed levers applied, at a group's first item to generate: fused (or
        quantised, compiled) weights cannot be unfused exactly, so each LoRA set gets a fresh load.
        """
        busy: list[Job] = []
        refused: dict[tuple, str] = {}
        summary = self.recorder.summary
        with (
            logging_redirect_tqdm() if self.progress else nullcontext(),  # log lines above the bars
            tqdm(total=len(jobs), desc="videos", unit="video", disable=not self.progress, dynamic_ncols=True) as bar,
        ):
            for job in by_lora_set(jobs):
                bar.update()
                with claimed(job, self.recorder, wait=wait) as make:
                    if make is False:
                        busy.append(job)
                    elif make and job.lora_set in refused:
                        self.recorder.fail(job, refused[job.lora_set])
                    elif make:
                        try:
                            self._load(load_pipe, job)
                        except ConfigError as exc:  # a LoRA the experts cannot take: its items fail alone
                            refused[job.lora_set] = one_line(exc)
                            self.recorder.fail(job, refused[job.lora_set])
                        else:
                            self._generate(job)
                bar.set_postfix(done=summary.done, failed=summary.failed)
        return busy

    def _load(self, load_pipe: Callable[[list[LoraFile]], WanT2V], job: Job) -> None:
        """The model with the job's LoRAs fused, unless loaded already; the previous one's memory is freed first."""
        if self.pipe is not None and self.pipe_loras == job.lora_set:
            return
        self.pipe, self.pipe_loras = None, None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.pipe = load_pipe(job.loras)
        self.pipe_loras = job.lora_set

    def _generate(self, job: Job) -> None:
        start = time.perf_counter()
        done = attempt(self.pipe, job.settings, progress=self.progress)
        if done.error is not None:
            return self.recorder.fail(job, done.error, exc_info=done.exc_info, **done.fields)
        context = item_context(self.context, job, done.computed)
        write = partial(write_outputs, done.result, job.output, self.config.fps, context)
        return self.recorder.save(job, write, done.result.timings, start)
