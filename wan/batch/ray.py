"""Batch runs over a Ray cluster: one actor per GPU builds the engine once and takes items until none are left.

The driver (``generate.py --prompt_file F --ray ADDRESS``) keeps everything the single-process batch
keeps: the item list, the claims on each output, the manifest, the files. Workers only generate and
encode; the encoded video and its sidecar come back to the driver, which writes them atomically into
``--save_dir`` on its own machine, so a cluster needs no shared file system. What this adds:

- an item whose worker process dies (killed, out of host memory, its node lost) is given to another
  worker, at most ``MAX_ATTEMPTS`` times, then recorded as failed with the reason; the dead worker
  is replaced (a new actor loads the model again) while replacements last;
- the driver claims an item's output before a worker starts it and holds the claim until the files
  and the manifest line are written, so a second driver (or a single-process batch) on the same
  folder never makes it too, and a driver killed with kill -9 and started again skips what is done
  (``wan.batch.manifest``);
- one progress bar for the whole job, with each worker's throughput; the manifest names the worker
  that made each item.

A worker runs one process on ``--ray_gpus_per_worker`` GPUs; only 1 is supported: the multi-GPU path
(Ulysses, CFG parallel, FSDP) runs one process per GPU under torchrun, which one actor is not, and
for a batch one worker per GPU makes more videos per hour than GPUs sharing each video.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Mapping
from contextlib import ExitStack, nullcontext, suppress
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from wan.batch.jobs import Job, by_lora_set
from wan.batch.manifest import BatchRecorder, BatchStopped, BatchSummary
from wan.batch.ray_cluster import WorkerPlan, check_ray_flags, connect, plan_workers, shipped, worker_flags
from wan.batch.runner import attempt, claimed, item_context, run_jobs
from wan.errors import BAD_INPUT, ConfigError, one_line
from wan.lora import LoraFile
from wan.outputs import encode_video, sidecar, write_encoded

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""Workers an item may take down (or lose with their node) before it is recorded as failed."""
POLL_S = 1.0
"""How often the driver looks again at items another process is making, and refreshes the bar."""


def run_ray(
    jobs: list[Job],
    recorder: BatchRecorder,
    flags: Mapping[str, Any],
    prompt_file: Path,
    *,
    progress: bool = True,
) -> BatchSummary:
    """The batch on Ray (``flags``: generate.py's, with ``ray``, ``ray_workers``, ``ray_gpus_per_worker``).

    Joins or starts the cluster, sizes the workers to it, runs, and leaves the cluster as it was.
    """
    check_ray_flags(flags["ray_workers"], flags["ray_gpus_per_worker"])
    connect(flags["ray"], quiet=not progress)
    import ray

    try:
        plan = plan_workers(flags["ray_workers"], flags.get("device"))
        logger.info("Ray: %d workers (%d GPU, %d CPU each)", plan.count, plan.gpus, plan.cpus)
        jobs = [shipped(job) for job in jobs]
        return RayBatchRunner(jobs, recorder, worker_flags(flags), str(prompt_file), plan, progress=progress).run()
    finally:
        ray.shutdown()


class BatchWorker:
    """A Ray actor: one engine, built once per LoRA set, making one item per call."""

    def __init__(self, name: str, flags: dict[str, Any], runs: list[Any], log_level: int):
        import diffusers.utils.logging
        import transformers.utils.logging

        logging.basicConfig(level=log_level, format="%(levelname)s %(message)s")
        diffusers.utils.logging.disable_progress_bar()  # the driver's bar is the job's only one
        transformers.utils.logging.disable_progress_bar()
        self.name = name
        self.flags = flags
        self.runs = runs
        self.engine = None
        self.engine_loras: tuple | None = None
        self.refused: dict[tuple, str] = {}

    def pid(self) -> int:
        """This worker's process (answered while an item runs: the "control" concurrency group)."""
        return os.getpid()

    def ready(self, loras: list[LoraFile]) -> dict[str, Any]:
        """Build the engine with ``loras`` fused; a ``ConfigError`` (no checkpoint on this node) is raised."""
        from wan.engine import build_engine
        from wan.options import resolve_options
        from wan.plan import build_plan

        start = time.perf_counter()
        options = replace(resolve_options(self.flags), loras=tuple(loras))
        runs = []
        for settings in self.runs:
            with suppress(ConfigError):  # an item whose schedule is refused fails alone, when it runs
                runs.append(build_plan(settings, options.config))
        self.engine, self.engine_loras = None, None
        self.engine = build_engine(options, runs)
        self.engine_loras = Job(0, 0, "", loras=list(loras)).lora_set
        return {
            "name": self.name,
            "node": socket.gethostname(),
            "pid": os.getpid(),
            "seconds": time.perf_counter() - start,
        }

    def make(self, job: Job, prompt_file: str) -> dict[str, Any]:
        """One item: its encoded video and sidecar, or the one-line reason it failed."""
        if job.lora_set in self.refused:
            return {"error": self.refused[job.lora_set]}
        if self.engine_loras != job.lora_set:
            try:
                self.ready(job.loras)
            except ConfigError as exc:  # a LoRA the experts cannot take: its items fail alone
                self.refused[job.lora_set] = one_line(exc)
                return {"error": self.refused[job.lora_set]}
        start = time.perf_counter()
        done = attempt(self.engine.pipe, job.settings, progress=False)
        if done.error is not None:
            if done.exc_info is not None:
                logger.error("item %d failed on %s", job.index, self.name, exc_info=done.exc_info)
            return {"error": done.error, "fields": done.fields}
        context = item_context({**self.engine.sidecar_context(), "prompt_file": prompt_file}, job, done.computed)
        encode_start = time.perf_counter()
        data = encode_video(done.result.video, job.output.suffix.lower(), self.engine.options.config.fps)
        end = time.perf_counter()
        timings = {**done.result.timings, "encode": end - encode_start, "worker": end - start}
        return {"video": data, "sidecar": sidecar(done.result, job.output, context), "timings": timings}


@dataclass
class Worker:
    """The driver's view of one actor."""

    name: str
    handle: Any
    made: int = 0
    busy_s: float = 0.0  # seconds spent on the items this worker made


@dataclass
class Flight:
    """An item a worker is making, with the claim the driver holds on its output."""

    job: Job
    worker: Worker
    claim: ExitStack
    start: float = field(default_factory=time.perf_counter)


class RayBatchRunner:
    """The driver: hands jobs to Ray workers one at a time, writes and records what they return."""

    def __init__(
        self,
        jobs: list[Job],
        recorder: BatchRecorder,
        flags: Mapping[str, Any],
        prompt_file: str,
        plan: WorkerPlan,
        *,
        progress: bool = True,
    ):
        self.jobs = jobs
        self.recorder = recorder
        self.flags = dict(flags)
        self.prompt_file = prompt_file
        self.plan = plan
        self.progress = progress
        self.replacements = plan.count  # dead workers replaced, at most
        self.started = 0
        self.attempts: Counter[int] = Counter()
        self.died_on: dict[int, set[str]] = {}
        self.workers: list[Worker] = []  # loaded and alive
        self.starting: dict[Any, Worker] = {}  # ``ready`` call -> worker loading its model
        self.idle: deque[Worker] = deque()
        self.flights: dict[Any, Flight] = {}
        self.pending: deque[Job] = deque()
        self.held: dict[int, ExitStack] = {}  # claims kept while an item waits for its retry

    def run(self) -> BatchSummary:
        return run_jobs(self.jobs, self.recorder, self._make_all)

    def _start_worker(self) -> None:
        """A new actor; it loads the model for the base LoRA set and takes items once ``ready`` returns."""
        import ray

        actor = ray.remote(concurrency_groups={"control": 1})(BatchWorker).options(
            name=f"wan-batch-worker-{os.getpid()}-{self.started}",
            num_gpus=self.plan.gpus,
            num_cpus=self.plan.cpus,
            max_restarts=0,
        )
        worker = Worker(f"worker-{self.started}", None)
        self.started += 1
        runs = [j.settings for j in self.jobs if j.settings]
        worker.handle = actor.remote(worker.name, self.flags, runs, logging.getLogger().getEffectiveLevel())
        first = self.pending[0].loras if self.pending else []
        self.starting[worker.handle.ready.remote(first)] = worker

    def _make_all(self, jobs: list[Job], wait: bool) -> list[Job]:
        """Give every job to a worker; return those another process holds (``wait``: look again until it is done).

        The driver never blocks on a claim while it holds others (two drivers would wait on each other):
        with ``wait`` a held item is looked at again every ``POLL_S``.
        """
        import ray

        self.pending.extend(by_lora_set(jobs))
        busy: list[Job] = []
        if not self.started:
            for _ in range(self.plan.count):
                self._start_worker()
        summary = self.recorder.summary
        with (
            ExitStack() as claims,
            logging_redirect_tqdm() if self.progress else nullcontext(),
            tqdm(total=len(jobs), desc="videos", unit="video", disable=not self.progress, dynamic_ncols=True) as bar,
        ):
            self.bar = bar
            while self.pending or self.flights or (wait and busy):
                while self.idle and self.pending:
                    job = self._next_for(self.idle[0])
                    claim = self.held.pop(job.index, None)
                    if claim is None:
                        claim = claims.enter_context(ExitStack())
                        state = claim.enter_context(claimed(job, self.recorder, wait=False))
                        if state is not True:  # held by another process, or found complete
                            claim.close()
                            if state is False:
                                busy.append(job)
                            else:
                                bar.update()
                            continue
                    worker = self.idle.popleft()
                    self.flights[worker.handle.make.remote(job, self.prompt_file)] = Flight(job, worker, claim)
                if not self.flights and not (self.pending and (self.starting or self.workers)):
                    if wait and busy:  # another process holds them: look again shortly
                        time.sleep(POLL_S)
                        self.pending.extend(busy)
                        busy.clear()
                        continue
                    if self.pending:
                        raise BatchStopped("every Ray worker died and no replacement is left; re-run to resume")
                    break
                ready, _ = ray.wait([*self.flights, *self.starting], num_returns=1, timeout=POLL_S)
                for ref in ready:
                    if ref in self.starting:
                        self._started(self.starting.pop(ref), ref)
                    else:
                        self._settle(self.flights.pop(ref), ref)
                bar.set_postfix(done=summary.done, failed=summary.failed, **self._rates())
        return busy

    def _next_for(self, worker: Worker) -> Job:
        """The first pending job this worker has not died on (a retry goes to another worker where one is)."""
        for job in self.pending:
            if worker.name not in self.died_on.get(job.index, ()):
                self.pending.remove(job)
                return job
        return self.pending.popleft()

    def _started(self, worker: Worker, ref: Any) -> None:
        """A worker's model is loaded: it takes items. A bad checkpoint or flag there ends the batch (one line)."""
        import ray

        try:
            info = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, BAD_INPUT):
                raise ConfigError(f"Ray {worker.name}: {exc.cause}") from exc
            raise
        except ray.exceptions.RayActorError as exc:
            logger.warning("Ray %s died while loading (%s)", worker.name, one_line(exc))
            self._replace(worker)
            return
        logger.info("Ray %s ready on %s (pid %d) in %.1f s", worker.name, info["node"], info["pid"], info["seconds"])
        self.workers.append(worker)
        self.idle.append(worker)

    def _settle(self, flight: Flight, ref: Any) -> None:
        """Write and record what the worker returned, or give the item to another worker if this one died."""
        import ray

        job, worker = flight.job, flight.worker
        extra = {"worker": worker.name, "attempts": self.attempts[job.index] + 1}
        try:
            out = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            return self._worker_died(flight, one_line(exc))
        except ray.exceptions.RayTaskError as exc:  # an error outside the item's own generation (encoding, loading)
            out = {"error": one_line(exc.cause if isinstance(exc.cause, BaseException) else exc)}
        self.idle.append(worker)
        self.bar.update()
        try:
            if "error" in out:
                return self.recorder.fail(job, out["error"], **out.get("fields", {}), **extra)
            worker.made += 1
            worker.busy_s += out["timings"]["worker"]
            write = partial(write_encoded, out["video"], out["sidecar"], job.output)
            return self.recorder.save(job, write, out["timings"], flight.start, **extra)
        finally:
            flight.claim.close()

    def _worker_died(self, flight: Flight, reason: str) -> None:
        """Replace the worker; the item goes to another worker, or fails after ``MAX_ATTEMPTS`` deaths."""
        job, worker = flight.job, flight.worker
        self.attempts[job.index] += 1
        tries = self.attempts[job.index]
        logger.warning(
            "Ray %s died making item %d (try %d of %d): %s", worker.name, job.index, tries, MAX_ATTEMPTS, reason
        )
        self.workers.remove(worker)
        self._replace(worker)
        if tries >= MAX_ATTEMPTS:
            flight.claim.close()
            self.bar.update()
            error = f"its Ray worker died {tries} times while making it (last: {reason})"
            return self.recorder.fail(job, error, worker=worker.name, attempts=tries)
        self.died_on.setdefault(job.index, set()).add(worker.name)
        self.held[job.index] = flight.claim
        self.pending.appendleft(job)
        return None

    def _replace(self, dead: Worker) -> None:
        """Start a new actor for a dead one while replacements last."""
        import ray

        ray.kill(dead.handle, no_restart=True)
        if self.replacements > 0:
            self.replacements -= 1
            self._start_worker()

    def _rates(self) -> dict[str, str]:
        """Each worker's videos per minute of its own generating time."""
        return {w.name: f"{60 * w.made / w.busy_s:.1f}/min" for w in self.workers if w.busy_s}
