"""Throughput of a Ray batch with 1 and with W workers, once the models are loaded (JSON on stdout).

    python scripts/bench_ray.py --workers 1 2 --items_per_worker 6 --sample_steps 4

Each worker gets ``--threads`` CPU threads (or one GPU where the Ray instance has GPUs), so W workers use
W times the resources of one and the ideal is W times its throughput. Throughput counts the items
dispatched after every worker has loaded its model, over the time from that moment to the last of
them written by the driver: model loading, Ray start-up and the code upload are left out.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import generate  # noqa: E402
from wan.batch.jobs import plan_jobs  # noqa: E402
from wan.batch.manifest import MANIFEST_NAME, BatchRecorder, Manifest  # noqa: E402
from wan.batch.prompt_file import read_prompt_file  # noqa: E402
from wan.batch.ray import RayBatchRunner  # noqa: E402
from wan.batch.ray_cluster import connect, plan_workers, worker_flags  # noqa: E402

PROMPTS = [
    "a red square moving left",
    "a blue circle moving right",
    "a green triangle moving up",
    "a yellow square moving down",
]


class TimedRunner(RayBatchRunner):
    """The driver, noting when the initial workers are all loaded and when each item is dispatched and written."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.all_ready: float | None = None
        self.items: list[tuple[float, float, str]] = []  # (dispatched, written, worker)

    def _started(self, worker, ref):
        super()._started(worker, ref)
        if len(self.workers) == self.plan.count and self.all_ready is None:
            self.all_ready = time.perf_counter()

    def _settle(self, flight, ref):
        super()._settle(flight, ref)
        self.items.append((flight.start, time.perf_counter(), flight.worker.name))


def measure(workers: int, known: argparse.Namespace, flags: dict, config, folder: Path) -> dict:
    prompts = folder / "prompts.txt"
    count = workers * known.items_per_worker
    prompts.write_text("\n".join(f"{PROMPTS[i % len(PROMPTS)]} {i}" for i in range(count)) + "\n")
    jobs = plan_jobs(read_prompt_file(prompts), generate.generation_flags(flags), config, folder)
    manifest = Manifest(folder / MANIFEST_NAME)
    plan = plan_workers(workers, flags.get("device"), known.threads)
    runner = TimedRunner(jobs, BatchRecorder(manifest, config), worker_flags(flags), str(prompts), plan, progress=False)
    start = time.perf_counter()
    summary = runner.run()
    assert summary.done == count, f"{summary.failed} items failed; see {manifest.path}"
    warm = [(s, e, w) for s, e, w in runner.items if s >= runner.all_ready]
    window = max(e for _, e, _ in warm) - runner.all_ready
    per_item = sum(w.busy_s for w in runner.workers) / count
    rate = 60 * len(warm) / window
    return {
        "workers": workers,
        "gpus_per_worker": plan.gpus,
        "threads_per_worker": plan.cpus,
        "items": count,
        "items_timed": len(warm),
        "seconds_timed": round(window, 3),
        "videos_per_minute": round(rate, 3),
        "seconds_to_all_loaded": round(runner.all_ready - start, 3),
        "per_worker": {w.name: w.made for w in runner.workers},
        # each item's own generating time inside its worker: if it grows with W, the workers share cores
        "worker_seconds_per_item": round(per_item, 3),
        # the job's rate over what the workers' own item times allow: what the driver and Ray cost
        "busy_fraction": round(rate / (workers * 60 / per_item), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--items_per_worker", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per CPU worker")
    parser.add_argument("--ray", default="local", help="as generate.py --ray")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    known, rest = parser.parse_known_args()
    args = generate.build_parser().parse_args(["--frame_num", "5", "--sample_steps", "4", "--base_seed", "0", *rest])
    logging.basicConfig(level=logging.WARNING)
    generate.silence_library_progress()
    flags, config = generate.checked_flags(args)
    connect(known.ray, quiet=True)
    load_before = os.getloadavg()[0]
    runs = []
    for workers in known.workers:
        with tempfile.TemporaryDirectory(prefix="bench-ray-") as folder:
            runs.append(measure(workers, known, flags, config, Path(folder)))
    one = runs[0]["videos_per_minute"] / runs[0]["workers"]
    for run in runs:
        run["scaling"] = round(run["videos_per_minute"] / (one * run["workers"]), 3)  # 1.0 = W x one worker's
    result = {
        "command": " ".join(["python", "scripts/bench_ray.py", *sys.argv[1:]]),
        "task": config.task,
        "frame_num": flags["frame_num"],
        "sample_steps": flags["sample_steps"],
        "size": flags["size"] or config.default_size,
        "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "cpus": os.cpu_count(),
        "runs": runs,
    }
    text = json.dumps(result, indent=2)
    if known.out:
        known.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
