"""Joining a Ray cluster for a batch: the address, the workers it can hold, what a worker is sent.

``--ray local`` starts an instance on this machine; any other address joins a running cluster, and one
that nobody answers fails at once with one line. The project's code goes to the workers with the job
(Ray's ``working_dir``), and every path a worker reads is made absolute, since its working folder is
not the driver's. Imported only with ``--ray``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from wan.batch.jobs import Job
from wan.errors import ConfigError, one_line

LOCAL = "local"
"""``--ray local``: start a Ray instance on this machine for this run."""
REPO = Path(__file__).resolve().parents[2]
SHIPPED_EXCLUDES = [".git", "tests", "docs", "outputs", "scripts"]
"""Left out of the code shipped to the workers (the repository, as Ray's ``working_dir``)."""


def worker_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The flags a worker resolves its engine from, with paths made absolute: a worker runs elsewhere."""
    from wan.lora import FLAG_EXPERTS, parse_lora_arg

    out = {k: v for k, v in flags.items() if not k.startswith("ray")}
    if out.get("ckpt_dir"):
        out["ckpt_dir"] = os.path.abspath(out["ckpt_dir"])
    if out.get("task") and Path(out["task"]).is_file():
        out["task"] = os.path.abspath(out["task"])
    for flag in FLAG_EXPERTS:
        values = []
        for value in out.get(flag) or []:
            path, scale = parse_lora_arg(value)
            values.append(f"{path.absolute()}:{scale!r}")
        out[flag] = values or None
    return out


def shipped(job: Job) -> Job:
    """The job with its LoRA files' paths made absolute (the worker's working folder is not the driver's)."""
    loras = [replace(f, spec=replace(f.spec, path=f.spec.path.absolute())) for f in job.loras]
    return replace(job, loras=loras)


def check_ray_flags(workers: int | None, gpus_per_worker: int) -> None:
    """The Ray flags on their own, before anything starts."""
    if gpus_per_worker != 1:
        raise ConfigError(
            f"--ray_gpus_per_worker {gpus_per_worker}: a Ray worker is one process on one GPU; the multi-GPU path "
            "needs one process per GPU (torchrun), and a batch makes more videos per hour with one worker per GPU"
        )
    if workers is not None and workers < 1:
        raise ConfigError(f"--ray_workers {workers}: give 1 or more")


def connect(address: str, quiet: bool) -> None:
    """Start (``local``) or join the Ray cluster; an address nobody answers is one ``ConfigError``."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("--ray needs the ray package: pip install 'ray[client]'") from exc
    _check_reachable(address)
    runtime_env = {"working_dir": str(REPO), "excludes": SHIPPED_EXCLUDES}
    level = logging.WARNING if quiet else logging.INFO
    try:
        if address == LOCAL:
            # "local" starts a new instance even where a ``ray start`` cluster (live or stale) is on record
            ray.init(address=LOCAL, runtime_env=runtime_env, include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
    except (ConnectionError, TimeoutError, ValueError) as exc:
        raise ConfigError(f"--ray {address}: cannot join a Ray cluster there ({one_line(exc)})") from exc
    logging.getLogger("ray").setLevel(level)


def _check_reachable(address: str) -> None:
    """A ``host:port`` or ``ray://host:port`` that refuses connections fails at once, not after Ray's long retries."""
    if address in (LOCAL, "auto"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray {address}: give local, auto, HOST:PORT (the head's GCS) or ray://HOST:10001")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ConfigError(
            f"--ray {address}: no Ray cluster answers there ({exc.strerror or exc}); start one with "
            "`ray start --head`, or pass --ray local"
        ) from exc


@dataclass
class WorkerPlan:
    """How many workers and what each asks Ray for."""

    count: int
    gpus: int  # per worker
    cpus: int  # per worker (CPU workers: their torch threads)


def plan_workers(requested: int | None, device: str | None, cpus_per_worker: int | None = None) -> WorkerPlan:
    """One worker per GPU of the cluster by default; ``requested`` CPU workers where there are none (or --device cpu).

    Refuses what the cluster cannot hold, since an actor that does not fit would wait forever.
    """
    import ray

    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    if gpus and device != "cpu":
        count = requested or gpus
        if count > gpus:
            raise ConfigError(f"--ray_workers {count}: the Ray cluster has {gpus} GPUs; give at most {gpus}")
        return WorkerPlan(count, 1, 1)
    if requested is None:
        raise ConfigError("the Ray cluster has no GPUs; pass --ray_workers N to run N CPU workers")
    per_worker = cpus_per_worker or max(1, cpus // requested)
    if requested * per_worker > cpus:
        raise ConfigError(f"--ray_workers {requested}: the Ray cluster has {cpus} CPUs; give at most {cpus}")
    return WorkerPlan(requested, 0, per_worker)
