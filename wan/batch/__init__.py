"""Batch generation that loses nothing: prompt files, resume, a manifest, per-item failures.

A batch of hundreds of videos on rented GPUs has to survive a kill, a bad prompt and a full disk
without losing finished work or leaving broken files. The parts:

- ``prompt_file``: reading a prompt file into items, each with its own flags or its error;
- ``jobs``: items resolved against the command line (settings, seeds, outputs), torchrun shards;
- ``manifest``: the JSONL record of every attempt and the bookkeeping every runner shares;
- ``runner``: one process, one loaded model; ``ray``: Ray actors over a cluster, with
  ``ray_cluster`` joining it (both imported only with ``--ray``);
- outputs themselves (names, sidecars, atomic writes, completeness) are ``wan.outputs``.

What ``generate.py`` uses is importable from here.
"""

from wan.batch.jobs import Job, plan_jobs, shard
from wan.batch.manifest import MANIFEST_NAME, BatchSummary, Manifest
from wan.batch.prompt_file import GENERATION_FLAGS, read_prompt_file
from wan.batch.runner import BatchRunner

__all__ = [
    "GENERATION_FLAGS",
    "MANIFEST_NAME",
    "BatchRunner",
    "BatchSummary",
    "Job",
    "Manifest",
    "plan_jobs",
    "read_prompt_file",
    "shard",
]
