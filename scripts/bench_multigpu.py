"""Per-step time and peak memory of the multi-GPU modes, A14B-size random experts, under torchrun (any world size N).

Random bf16 experts and text embeddings as in ``bench_e2e.py`` (``benchmarks.weights``) (time does not depend on weight
values; no T5 or VAE in the step timings). The modes use the project's own ``wan.distributed.parallelize``
and ``WanT2V.velocity`` (one step's model output: what a sampling step costs besides the solver):

- ``1gpu``: rank 0 alone, the one-process velocity, no context parallel (the others wait);
- ``ulysses``: Ulysses over all N ranks (what ``--ulysses_size N`` runs);
- ``cfg_parallel``: 2 CFG groups x Ulysses N/2 (``--cfg_parallel --ulysses_size N/2``);
- ``ulysses+fsdp``, ``cfg_parallel+fsdp``: the same with the experts sharded by ``--dit_fsdp`` (rebuilt).

Per mode and size, the seconds of one step of each kind, max over ranks, median of ``--repeats``
after warm-up steps (a CFG and, in the parallel modes, a cond-only step on the half frames):
``cfg_full`` (a CFG step on all latent frames), ``cfg_half`` (a CFG step on the half frames of
half-frame generation's high-noise steps), ``cond_full`` (a cond-only step, as CFG truncation runs;
once in 1gpu, where it is one forward); peak memory of every rank; the largest difference of each
velocity from the
``1gpu`` one; and a 40-step projection (26 high + 14 low) with half-frame generation off and on.
Last, one umT5-XXL-size encode (2 x 512 tokens) with and without ``--t5_fsdp``'s sharding. The JSON
is rewritten after every stage, so a run cut short keeps what it measured.

    torchrun --nproc_per_node 2 scripts/bench_multigpu.py --out multigpu.json      # 2 H200s, ~7 min
    torchrun --nproc_per_node 2 scripts/bench_multigpu.py --modes ulysses,ulysses+fsdp --sizes 832*480 \
        --fsdp_prefetch 2 --out prefetch2.json                                      # one FSDP variant
    torchrun --nproc_per_node 2 scripts/bench_multigpu.py --tiny --device cpu --dtype float32 \\
        --sizes 64*64 --frame_num 9 --out tiny.json                                 # CPU check (gloo)
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python scripts/bench_multigpu.py`

from benchmarks.multigpu import MODES, run  # noqa: E402
from wan.distributed import init_distributed, session  # noqa: E402

logger = logging.getLogger("bench_multigpu")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--sizes", default="832*480,1280*720", help="comma-separated W*H")
    p.add_argument("--frame_num", type=int, default=81)
    p.add_argument("--repeats", type=int, default=2, help="timed steps per kind after the warm-up")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from: {', '.join(MODES)}")
    p.add_argument("--fsdp_prefetch", type=int, default=1, help="blocks gathered ahead under FSDP (0: FSDP2's own)")
    p.add_argument("--out", default="bench_multigpu.json")
    p.add_argument("--layers", type=int, default=None, help="transformer blocks (default 40; 2 with --tiny)")
    p.add_argument("--tiny", action="store_true", help="toy dims for a CPU check")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--init_std", type=float, default=0.02)
    p.add_argument("--prompt_rows", type=int, default=120, help="non-zero rows of the random text embeddings")
    p.add_argument("--budget_s", type=float, default=450.0, help="skip the stages that start after this many s")
    p.add_argument("--dist_timeout_s", type=float, default=900.0, help="collectives' timeout (1gpu: others wait)")
    return p


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    ctx = init_distributed(args.device, timeout_s=args.dist_timeout_s)
    if ctx.rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    with session(ctx):
        report = run(args, ctx, started)
    if ctx.rank == 0:
        logger.info("wrote %s (%s, %.0f s)", args.out, report["status"], report["elapsed_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
