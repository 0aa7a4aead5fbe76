"""wan.distributed: single-process behaviour, validation, and 2 CPU ranks (gloo) against one process.

The 2-rank tests run diffusers' Ulysses context parallel, CFG parallel and FSDP2 for real on gloo; they
check that the latents and the rank-0 video equal the single-process ones, for text-to-video and for the
image tasks (i2v's extra input channels, ti2v's per-token timesteps and its one expert).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from tiny_models import TinyParts, as_components, tiny_parts

from wan.config import load_task_config
from wan.distributed import (
    DistContext,
    broadcast_seed,
    init_distributed,
    is_main,
    parallelize,
    session,
    validate,
)
from wan.errors import ConfigError
from wan.plan import build_plan
from wan.settings import GenerationSettings
from wan.text2video import WanT2V

PROMPT = "a red square moving left"
STEPS = 6  # with shift 12: 4 high-noise steps, then 2 low-noise ones (half-frame needs both)
# 48*32 at 9 frames: 3 latent frames x 6 = 18 tokens, half-frame 2 x 6 = 12: both split over 2 ranks
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def make_pipe(config, parts: TinyParts | None = None) -> WanT2V:
    parts = copy.deepcopy(parts) if parts is not None else tiny_parts(0)
    components = as_components(parts)
    return WanT2V(config, components)


def settings(half_frame: bool = False) -> GenerationSettings:
    return GenerationSettings(
        prompt=PROMPT, size="48*32", frame_num=9, seed=3, sample_steps=STEPS, half_frame=half_frame
    )


def two_ranks(world: int = 2) -> DistContext:
    return DistContext(rank=0, world_size=world, local_rank=0, device=torch.device("cpu"))


# ----------------------------------------------------------------------------------- one process
def test_single_process_without_torchrun(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed("cpu")
    assert ctx == DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert is_main(ctx)
    assert broadcast_seed(1234, ctx) == 1234
    assert not torch.distributed.is_initialized()


def test_parallelize_is_a_no_op_on_one_process(test_config):
    pipe = make_pipe(test_config)
    before = {k: v.clone() for k, v in pipe.experts["high_noise"].state_dict().items()}
    parallelize(pipe, DistContext(), plan=pipe.plan(settings(half_frame=True)))
    assert pipe.experts["high_noise"]._parallel_config is None
    after = pipe.experts["high_noise"].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ----------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("ctx", "kwargs", "message"),
    [
        (DistContext(), {"ulysses_size": 2}, "torchrun"),
        (DistContext(), {"dit_fsdp": True}, "torchrun"),
        (DistContext(), {"t5_fsdp": True}, "torchrun"),
        (two_ranks(4), {"ulysses_size": 3}, "must divide the world size 4"),
        (two_ranks(), {"ulysses_size": 0}, ">= 1"),
        (two_ranks(), {"t5_fsdp": True, "t5_cpu": True}, "exclude each other"),
        (two_ranks(4), {"ulysses_size": 4, "num_heads": 2}, "2 attention heads"),
        (two_ranks(), {"ulysses_size": 2, "num_heads": 2, "tokens": (30, 15)}, "sequence length 15"),
    ],
)
def test_validation_errors_are_one_line(ctx, kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        validate(ctx, **kwargs)
    assert "\n" not in str(info.value)


def test_valid_settings_pass():
    validate(two_ranks(4), ulysses_size=2, dit_fsdp=True, t5_fsdp=True, num_heads=40, tokens=(32760, 17160))
    validate(two_ranks(2), dit_fsdp=True)


def test_parallelize_checks_heads_and_tokens(test_config):
    pipe = make_pipe(test_config)  # 2 heads
    with pytest.raises(ConfigError, match="attention heads"):
        parallelize(pipe, two_ranks(4), ulysses_size=4)
    odd = dataclasses.replace(test_config, sizes=("48*16",))  # 3 latent frames x 3 = 9 tokens
    odd_pipe = make_pipe(odd)
    plan = odd_pipe.plan(dataclasses.replace(settings(), size="48*16"))
    with pytest.raises(ConfigError, match="sequence length 9"):
        parallelize(odd_pipe, two_ranks(2), ulysses_size=2, plan=plan)


@pytest.mark.parametrize("flags", [{"ulysses_size": 2}, {"cfg_parallel": True}, {"dit_fsdp": True}])
def test_step_caching_is_refused_where_ranks_share_a_forward(test_config, flags):
    """Each rank would decide alone which blocks to skip: the ranks' collectives would stop matching."""
    from diffusers import FirstBlockCacheConfig

    pipe = make_pipe(test_config)
    pipe.experts["low_noise"].enable_cache(FirstBlockCacheConfig(threshold=0.05))
    with pytest.raises(ConfigError, match="step caching"):
        parallelize(pipe, two_ranks(2), **flags)
    parallelize(pipe, DistContext())  # one process: caching stays a single-GPU lever


def test_sequence_lengths_of_a14b_divide_by_the_ulysses_sizes():
    """The design's claim: 480p/720p at 81 frames and their half-frame lengths divide by 2, 4 and 8."""
    config = load_task_config("t2v-A14B")

    def lengths(**kw) -> tuple[int, ...]:
        return build_plan(GenerationSettings(prompt="x", **kw), config).sequence_lengths

    assert lengths(size="832*480") == (32760,)
    assert lengths(size="832*480", half_frame=True) == (32760, 17160)
    for size in config.sizes:
        counts = lengths(size=size, half_frame=True)
        for ulysses in (2, 4, 8):
            validate(two_ranks(8), ulysses_size=ulysses, num_heads=40, tokens=counts)


def test_an_image_whose_shape_does_not_split_is_refused(tmp_path):
    """i2v-A14B at 480p, 81 frames: an 832*480 image makes 21 x 29 x 52 tokens, a square one 21 x 39 x 39."""
    config = load_task_config("i2v-A14B")
    lengths = {}
    for name, size in {"wide": (832, 480), "square": (512, 512)}.items():
        Image.new("RGB", size, (90, 40, 200)).save(tmp_path / f"{name}.png")
        run = GenerationSettings(prompt="x", size="832*480", image=str(tmp_path / f"{name}.png"))
        lengths[name] = build_plan(run, config).sequence_lengths
    assert lengths == {"wide": (31668,), "square": (31941,)}
    validate(two_ranks(2), ulysses_size=2, num_heads=40, tokens=lengths["wide"])
    with pytest.raises(ConfigError, match="sequence length 31941 .* image aspect ratio") as info:
        validate(two_ranks(2), ulysses_size=2, num_heads=40, tokens=lengths["square"])
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------- two ranks
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, config, parts: TinyParts, out_path: str) -> None:
    """One torchrun-like rank: Ulysses alone on a copy of ``parts``, then Ulysses + FSDP of experts and umT5.

    The parts come from the parent: the tiny tokenizer's vocabulary is not the same in every process.
    """
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    results = {"seed": broadcast_seed(100 + rank, ctx)}
    try:
        pipe = make_pipe(config, parts)
        parallelize(pipe, ctx, ulysses_size=2, plan=pipe.plan(settings(half_frame=True)))
        context = pipe.encode_text([PROMPT, config.negative_prompt])
        for half in (False, True):
            sampled = pipe.sample(settings(half), context[:1], context[1:], progress=False)
            results[f"ulysses_half{half}"] = sampled.latents
        pipe = make_pipe(config, parts)
        parallelize(pipe, ctx, ulysses_size=2, dit_fsdp=True, t5_fsdp=True, plan=pipe.plan(settings(half_frame=True)))
        result = pipe.generate(settings(half_frame=True), progress=False, decode=ctx.rank == 0)
        results["fsdp_latents"], results["fsdp_video"] = result.latents, result.video
        torch.save(results, f"{out_path}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_two_cpu_ranks_match_one_process(test_config, tmp_path):
    out = str(tmp_path / "rank")
    parts = tiny_parts(0)
    mp.spawn(_worker, args=(2, _free_port(), test_config, parts, out), nprocs=2, join=True)
    pipe = make_pipe(test_config, parts)
    context = pipe.encode_text([PROMPT, test_config.negative_prompt])
    expected = {half: pipe.sample(settings(half), context[:1], context[1:], progress=False) for half in (False, True)}
    single = pipe.generate(settings(half_frame=True), progress=False)
    torch.testing.assert_close(single.latents, expected[True].latents, rtol=0, atol=0)
    assert {"text_encoding", "high_noise", "low_noise", "completion", "vae_decode"} <= single.timings.keys()
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]

    assert [r["seed"] for r in ranks] == [100, 100]
    for r in ranks:
        for half in (False, True):
            torch.testing.assert_close(r[f"ulysses_half{half}"], expected[half].latents, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(r["fsdp_latents"], expected[True].latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ranks[0]["fsdp_video"], single.video, rtol=1e-5, atol=1e-5)
    assert ranks[1]["fsdp_video"].numel() == 0  # rank 0 alone decodes


# ----------------------------------------------------------------------------------- image tasks
IMAGE_CASES = {"i2v": ("i2v", "portrait"), "ti2v-image": ("ti2v", "landscape"), "ti2v-text": ("ti2v", None)}
"""Case -> (task, image): i2v (image channels, two experts), ti2v with and without its first frame (one expert)."""
LEVERS = {
    "ulysses": ({"ulysses_size": 2}, {"ulysses"}),
    "cfg_parallel": ({"cfg_parallel": True}, {"cfg_parallel", "ulysses"}),
    "fsdp": ({"dit_fsdp": True, "t5_fsdp": True}, {"fsdp"}),
}
"""Lever -> (its flags on 2 ranks, what is in place after the run). The runs truncate CFG on their last step,
which CFG parallel runs on Ulysses over both ranks."""


def in_place(pipe: WanT2V) -> set[str]:
    """The levers acting on the experts after a run (Ulysses: the config the last step left active)."""
    from torch.distributed.fsdp import FSDPModule

    from wan.cfg_parallel import CfgParallelVelocity

    experts = pipe.experts.values()
    levers = {
        "ulysses": any(expert._parallel_config is not None for expert in experts),
        "cfg_parallel": isinstance(pipe.velocity, CfgParallelVelocity),
        "fsdp": all(isinstance(expert, FSDPModule) for expert in experts),
    }
    return {name for name, on in levers.items() if on}


@pytest.fixture(scope="module")
def image_runs(request, images) -> dict[str, tuple]:
    """Case -> (config, parts, settings) on the tiny image-task checkpoints of tests/conftest.py."""
    runs = {}
    for case, (task, image) in IMAGE_CASES.items():
        config = load_task_config(str(request.getfixturevalue(f"{task}_task")))
        run = GenerationSettings(
            prompt=PROMPT, seed=3, cfg_truncate_steps=1, image=None if image is None else str(images[image])
        )
        runs[case] = (config, request.getfixturevalue(f"{task}_parts"), run)
    return runs


def _image_worker(rank: int, world: int, port: int, runs: dict[str, tuple], out_path: str) -> None:
    """Every image case under every lever of ``LEVERS``, through ``generate`` (rank 0 decodes)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    results = {}
    with session(ctx):
        for case, (config, parts, run) in runs.items():
            for lever, (flags, _) in LEVERS.items():
                pipe = make_pipe(config, parts)
                parallelize(pipe, ctx, **flags, plan=pipe.plan(run))
                result = pipe.generate(run, progress=False, decode=ctx.rank == 0)
                results[case, lever] = (result.latents, result.video, in_place(pipe))
    torch.save(results, f"{out_path}.{rank}")


@pytest.fixture(scope="module")
def image_ranks(image_runs, tmp_path_factory) -> list[dict]:
    """Both ranks' (latents, video, levers in place) per (case, lever), from one spawn of 2 ranks."""
    out = str(tmp_path_factory.mktemp("image-ranks") / "rank")
    mp.spawn(_image_worker, args=(2, _free_port(), image_runs, out), nprocs=2, join=True)
    return [torch.load(f"{out}.{r}") for r in range(2)]


@pytest.fixture(scope="module")
def one_process(image_runs):
    """Case -> the one-process result, computed once per case."""
    results = {}

    def run(case: str):
        if case not in results:
            config, parts, settings = image_runs[case]
            results[case] = make_pipe(config, parts).generate(settings, progress=False)
        return results[case]

    return run


@pytest.mark.parametrize("lever", list(LEVERS))
@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_image_tasks_on_two_cpu_ranks_match_one_process(image_ranks, one_process, case, lever):
    single = one_process(case)
    for rank in image_ranks:
        latents, _, levers = rank[case, lever]
        assert levers == LEVERS[lever][1]
        torch.testing.assert_close(latents, single.latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(image_ranks[0][case, lever][1], single.video, rtol=1e-5, atol=1e-5)
    assert image_ranks[1][case, lever][1].numel() == 0  # rank 0 alone decodes
