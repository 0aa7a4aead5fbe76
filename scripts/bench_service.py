"""The service's overhead around a job, against the job's generation time (t2v-tiny on the CPU by default).

    python scripts/bench_service.py --reps 5 --frame_num 5 --sample_steps 4 > service_bench.json

Starts the service as serve.py does (model loaded once, a real uvicorn server on 127.0.0.1) and sends
jobs one at a time over HTTP. For each job, from the client's POST to the moment the server records it
completed (one clock: same process):

- ``generate``: the engine's generation (text encoding, sampling, VAE decode), as the worker timed it;
- ``write``: the atomic video + sidecar write (generate.py does the same per video);
- ``overhead``: everything else: the POST (parse, validate, SQLite commit), the worker's pickup, the
  progress callbacks, the completion commit.

A direct run of ``engine.generate`` + ``write_outputs`` on the same engine, interleaved with the
service's, is reported beside it as a cross-check (on a busy machine the difference of two end-to-end
times is noisier than the measured overhead). Output: one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent.parent / "tests")]

from service_helpers import PROMPT, LiveServer, wait_for  # noqa: E402

from wan.service.worker import write_outputs  # noqa: E402
from wan.settings import GenerationSettings  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="t2v-tiny")
    p.add_argument("--ckpt_dir", default=None)
    p.add_argument("--frame_num", type=int, default=None, help="default: the task's")
    p.add_argument("--sample_steps", type=int, default=None, help="default: the task's")
    p.add_argument("--reps", type=int, default=3, help="jobs through the service (and as many direct runs)")
    p.add_argument(
        "--poll_s", type=float, default=1.0, help="the client's polling interval (its requests share the CPU)"
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--task", args.task, "--save_dir", tmp, "--quiet"]
        for flag in ("ckpt_dir", "frame_num", "sample_steps"):
            if getattr(args, flag) is not None:
                argv += [f"--{flag}", str(getattr(args, flag))]
        live = LiveServer(argv)
        try:
            engine = live.service.worker.engines.engine
            rows, direct = [], []
            body = {"prompt": PROMPT, "base_seed": 0}
            wait_for(live.client, [live.client.post("/v1/videos", json=body).json()["id"]])  # warm-up, not counted
            for rep in range(args.reps):
                sent = time.time()
                posted = live.client.post("/v1/videos", json=body)
                post_s = time.time() - sent
                job = wait_for(live.client, [posted.json()["id"]], poll_s=args.poll_s)[posted.json()["id"]]
                record = live.service.get(job["id"])
                worker = job["result"]["worker_seconds"]
                total = record.finished_at - sent
                rows.append(
                    {
                        "total": total,
                        "post": post_s,
                        "queued": record.started_at - record.created_at,
                        "generate": worker["generate"],
                        "write": worker["write"],
                        "overhead": total - worker["generate"] - worker["write"],
                    }
                )
                settings = GenerationSettings(**job["settings"])
                start = time.perf_counter()
                result = engine.generate(settings, progress=False)
                generated = time.perf_counter()
                write_outputs(result, Path(tmp) / f"direct_{rep}.mp4", engine.options.config.fps, {})
                direct.append({"generate": generated - start, "total": time.perf_counter() - start})
        finally:
            live.close()

    def median(key: str) -> float:
        return statistics.median(row[key] for row in rows)

    report = {
        "task": args.task,
        "settings": {"frame_num": job["settings"]["frame_num"], "sample_steps": job["settings"]["sample_steps"]},
        "reps": args.reps,
        "median_seconds": {key: round(median(key), 4) for key in rows[0]},
        "overhead_of_generation": round(median("overhead") / median("generate"), 5),
        "direct_median_seconds": {key: round(statistics.median(d[key] for d in direct), 4) for key in direct[0]},
        "service_generate_over_direct": round(median("generate") / statistics.median(d["generate"] for d in direct), 4),
        "service_total_over_direct": round(median("total") / statistics.median(d["total"] for d in direct), 4),
        "runs": [{k: round(v, 4) for k, v in row.items()} for row in rows],
        "direct_runs": [{k: round(v, 4) for k, v in d.items()} for d in direct],
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
