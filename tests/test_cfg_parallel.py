"""wan.cfg_parallel on 2 CPU ranks (gloo): CFG parallel equals one process; a failed or hung rank ends the run.

One spawn of 2 ranks (2 CFG groups x Ulysses 1) samples plain, with half-frame generation and with CFG
truncation, then with both and FSDP of experts and umT5 through ``generate``; the parent compares every
latent with the one-process loop on the same parts.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time

import pytest
import torch
import torch.multiprocessing as mp
from test_distributed import PROMPT, _free_port, make_pipe, settings
from tiny_models import TinyParts, tiny_parts
from torch.distributed import distributed_c10d as c10d

from wan.cfg_parallel import CfgParallelVelocity
from wan.config import HIGH, LOW
from wan.distributed import (
    DEFAULT_TIMEOUT_S,
    DistContext,
    broadcast_seed,
    init_distributed,
    parallelize,
    session,
    validate,
)
from wan.errors import ConfigError, DistributedRunError
from wan.settings import GenerationSettings

RUNS = {
    "cfg": {},
    "half": {"half_frame": True},
    "truncated": {"cfg_truncate_steps": 1, "cfg_truncate_high_noise_steps": 2},
}
HALF_TRUNCATED = {"half_frame": True, "cfg_truncate_steps": 1, "cfg_truncate_high_noise_steps": 2}


def run_settings(name: str) -> GenerationSettings:
    return dataclasses.replace(settings(), **(HALF_TRUNCATED if name == "half_truncated" else RUNS[name]))


def _torchrun_env(rank: int, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)


def _worker(rank: int, world: int, port: int, config, parts: TinyParts, out_path: str) -> None:
    """Every run of ``RUNS`` with CFG parallel, then FSDP + CFG parallel + truncation through ``generate``."""
    _torchrun_env(rank, world, port)
    ctx = init_distributed("cpu")
    results = {}
    with session(ctx):
        pipe = make_pipe(config, parts)
        parallelize(pipe, ctx, cfg_parallel=True, plan=pipe.plan(run_settings("half")))
        velocity = pipe.velocity
        context = pipe.encode_text([PROMPT, config.negative_prompt])
        for name in RUNS:
            results[name] = pipe.sample(run_settings(name), context[:1], context[1:], progress=False).latents
            results[f"{name}_active"] = [pipe.experts[e]._parallel_config for e in (HIGH, LOW)]
        results["configs"] = (velocity.group_config, velocity.world_config)
        results["cfg_rank"] = velocity.cfg_rank
        pipe = make_pipe(config, parts)
        parallelize(pipe, ctx, cfg_parallel=True, dit_fsdp=True, t5_fsdp=True, plan=pipe.plan(run_settings("half")))
        result = pipe.generate(run_settings("half_truncated"), progress=False, decode=ctx.rank == 0)
        results["fsdp_latents"], results["fsdp_video"] = result.latents, result.video
        results["timeouts"] = {
            group._get_backend(torch.device("cpu")).options._timeout.total_seconds() for group in c10d._world.pg_map
        }
        torch.save(_describe(results), f"{out_path}.{rank}")


def _describe(results: dict) -> dict:
    """Configs become names (they hold process groups, which do not pickle)."""
    group, world = results.pop("configs")
    names = {id(group): "group", id(world): "world", id(None): "none"}
    for key in [k for k in results if k.endswith("_active")]:
        results[key] = [names[id(c)] for c in results[key]]
    return results


def test_cfg_parallel_matches_one_process(test_config, tmp_path):
    out = str(tmp_path / "rank")
    parts = tiny_parts(0)
    mp.spawn(_worker, args=(2, _free_port(), test_config, parts, out), nprocs=2, join=True)
    pipe = make_pipe(test_config, parts)
    context = pipe.encode_text([PROMPT, test_config.negative_prompt])
    expected = {name: pipe.sample(run_settings(name), context[:1], context[1:], progress=False) for name in RUNS}
    single = pipe.generate(run_settings("half_truncated"), progress=False)
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]

    assert [r["cfg_rank"] for r in ranks] == [0, 1]  # one rank per branch
    for r in ranks:
        for name in RUNS:
            torch.testing.assert_close(r[name], expected[name].latents, rtol=1e-5, atol=1e-5)
        # CFG steps ran on each group alone (Ulysses 1: no context parallel); the truncated last steps
        # of each expert, cond-only ones, on Ulysses over both ranks
        assert r["cfg_active"] == ["none", "none"]
        assert r["truncated_active"] == ["world", "world"]
        torch.testing.assert_close(r["fsdp_latents"], single.latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ranks[0]["fsdp_video"], single.video, rtol=1e-5, atol=1e-5)
    assert ranks[1]["fsdp_video"].numel() == 0  # rank 0 alone decodes
    assert ranks[0]["timeouts"] == {DEFAULT_TIMEOUT_S}  # the mesh and Ulysses groups too, not c10d's 30 min
    assert not torch.equal(expected["cfg"].latents, expected["truncated"].latents)  # truncation changed the plan


# ----------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("world", "ulysses", "message"),
    [(1, 1, "torchrun"), (4, 1, "--ulysses_size 2"), (3, 1, "even process count"), (8, 2, "--ulysses_size 4")],
)
def test_cfg_parallel_needs_two_groups_of_ulysses_size(world, ulysses, message):
    ctx = DistContext(rank=0, world_size=world)
    with pytest.raises(ConfigError, match=message):
        validate(ctx, ulysses_size=ulysses, cfg_parallel=True)


def test_cfg_parallel_layouts_pass():
    for world, ulysses in ((2, 1), (4, 2), (8, 4)):
        validate(DistContext(world_size=world), ulysses_size=ulysses, cfg_parallel=True, num_heads=40)


def test_cond_only_steps_fall_back_to_the_group_when_tokens_do_not_split():
    velocity = CfgParallelVelocity(pair=None, cfg_rank=0, world_size=4, group_config="group", world_config="world")
    expert = torch.nn.Module()
    expert.config = type("Config", (), {"patch_size": (1, 2, 2)})()
    assert velocity.cond_only_config(expert, torch.zeros(1, 16, 3, 4, 8)) == "world"  # 24 tokens
    assert velocity.cond_only_config(expert, torch.zeros(1, 16, 3, 2, 6)) == "group"  # 9 tokens


# ----------------------------------------------------------------------------------- failures
TIMEOUT_S = 3.0


def _failing_worker(rank: int, port: int, mode: str, queue) -> None:
    """Rank 1 raises (mode "raise") or hangs (mode "hang"); rank 0 waits in a collective."""
    _torchrun_env(rank, 2, port)
    ctx = init_distributed("cpu", timeout_s=TIMEOUT_S)
    start = time.monotonic()
    try:
        with session(ctx):
            if rank == 1 and mode == "raise":
                raise ValueError("rank 1 broke")
            if rank == 1:
                time.sleep(2 * TIMEOUT_S)
            broadcast_seed(7, ctx)
        queue.put((rank, "ok", "", time.monotonic() - start))
    except Exception as exc:  # noqa: BLE001 - the test reports what each rank saw
        queue.put((rank, type(exc).__name__, str(exc), time.monotonic() - start))


@pytest.mark.parametrize("mode", ["raise", "hang"])
def test_a_failed_or_hung_rank_ends_the_run_with_one_line(mode):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    port = _free_port()
    procs = [context.Process(target=_failing_worker, args=(r, port, mode, queue)) for r in range(2)]
    for p in procs:
        p.start()
    reports = {}
    for _ in range(2):
        rank, kind, message, seconds = queue.get(timeout=60)
        reports[rank] = (kind, message, seconds)
    for p in procs:
        p.join(timeout=30)
    kind, message, seconds = reports[0]
    assert kind == DistributedRunError.__name__
    assert message.startswith("rank 0/2: a collective failed or timed out (--dist_timeout_s 3)")
    assert "\n" not in message
    assert seconds < 3 * TIMEOUT_S  # not c10d's 30-minute gloo default
    if mode == "raise":
        assert reports[1][:2] == ("ValueError", "rank 1 broke")
