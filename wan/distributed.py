"""Multi-GPU generation under torchrun: Ulysses sequence parallel, CFG parallel and FSDP2 sharding.

Every rank runs the same loop on the same full latent (same seed, same plan); inside each expert,
diffusers' context parallel hooks split the tokens across the Ulysses group before the first block,
all-to-all the heads around self-attention, and gather the tokens after ``proj_out``, so the loop in
``wan.text2video`` needs no change. FSDP2 shards the weights of the experts (and optionally of the
umT5 encoder) block by block over all ranks to save memory. Rank 0 alone decodes and writes.

With ``ulysses_size`` smaller than the world size, the ranks form ``world / ulysses_size`` replica
groups that compute the same video (FSDP still shards weights over every rank). With ``cfg_parallel``
the world is two groups of ``ulysses_size`` ranks instead, one per CFG branch (``wan.cfg_parallel``).

Every collective has a timeout (``timeout_s``, default ``DEFAULT_TIMEOUT_S``): a rank that fails or
hangs ends the run with an error instead of leaving the others waiting forever (``session``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from wan.config import HIGH
from wan.errors import ConfigError, DistributedRunError
from wan.options import DEFAULT_DIST_TIMEOUT_S as DEFAULT_TIMEOUT_S
from wan.placement import Placement
from wan.plan import RunPlan
from wan.text2video import WanT2V

logger = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 600.0
"""How long ``init_process_group`` waits for every rank to join (startup skew is not a hang)."""
FSDP_PREFETCH_BLOCKS = 1
"""Blocks whose FSDP all-gather is issued ahead, while the current block computes."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: its rank, the world and its device, and the collectives' timeout."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    timeout_s: float = DEFAULT_TIMEOUT_S


def init_distributed(device_type: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """Join the torchrun process group (NCCL on CUDA, gloo on CPU); a single process when not under torchrun.

    ``device_type`` forces "cuda" or "cpu"; by default CUDA is used when available. ``timeout_s``
    bounds every collective after the join (``parallelize`` extends it to the groups it makes); the
    join itself may take up to ``JOIN_TIMEOUT_S``.
    """
    if timeout_s <= 0:
        raise ConfigError(f"--dist_timeout_s must be > 0, got {timeout_s}")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_type == "cuda" or (device_type is None and torch.cuda.is_available())
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                "use --nproc_per_node <= the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            rank=rank,
            world_size=world_size,
            device_id=device if use_cuda else None,
            timeout=timedelta(seconds=max(timeout_s, JOIN_TIMEOUT_S)),
        )
    ctx = DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device, timeout_s=timeout_s)
    if world_size > 1:
        _apply_timeout(ctx)
    return ctx


def shutdown(ctx: DistContext) -> None:
    """Leave the process group cleanly (NCCL warns about leaked communicators otherwise)."""
    if ctx.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def session(ctx: DistContext) -> Iterator[None]:
    """The multi-process part of a run: a clean shutdown after it, an abort if it raises.

    On an exception the process groups are aborted rather than destroyed, since destroying waits for
    peers that may never come; the exiting rank then closes its connections (gloo peers fail at once)
    and torchrun ends the other workers. A failed or timed-out collective becomes a one-line
    ``DistributedRunError`` naming this rank and the timeout.
    """
    try:
        yield
    except BaseException as exc:
        abort(ctx)
        if not _from_collective(exc):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise DistributedRunError(
            f"rank {ctx.rank}/{ctx.world_size}: a collective failed or timed out (--dist_timeout_s "
            f"{ctx.timeout_s:g}); another rank failed or hung: {first}"
        ) from exc
    shutdown(ctx)


def _from_collective(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective's failure: a ``DistError``, or gloo's plain RuntimeError out of c10d."""
    if isinstance(exc, dist.DistError):
        return True
    if not isinstance(exc, RuntimeError) or exc.__traceback__ is None:
        return False
    frame = exc.__traceback__
    while frame.tb_next is not None:
        frame = frame.tb_next
    return "torch/distributed/" in frame.tb_frame.f_code.co_filename.replace("\\", "/")


def abort(ctx: DistContext) -> None:
    """Tear down every process group without waiting for the other ranks."""
    if ctx.world_size > 1 and dist.is_initialized():
        dist.distributed_c10d._abort_process_group()


def is_main(ctx: DistContext) -> bool:
    """Rank 0 decodes, writes files and shows progress."""
    return ctx.rank == 0


def broadcast_seed(seed: int, ctx: DistContext) -> int:
    """Rank 0's seed on every rank, so all ranks draw the same noise (a drawn ``-1`` seed differs per rank)."""
    if ctx.world_size == 1:
        return seed
    value = torch.tensor([seed], dtype=torch.int64, device=ctx.device)
    dist.broadcast(value, src=0)
    return int(value.item())


def validate(
    ctx: DistContext,
    *,
    ulysses_size: int = 1,
    cfg_parallel: bool = False,
    dit_fsdp: bool = False,
    t5_fsdp: bool = False,
    t5_cpu: bool = False,
    num_heads: int | None = None,
    tokens: Iterable[int] = (),
) -> None:
    """Refuse multi-GPU settings that cannot work, with one-line errors; cheap, so call it before loading.

    Ulysses splits the tokens evenly (diffusers' sharder does not pad), so every sequence length must
    divide by ``ulysses_size``; an image task's length follows its image's aspect ratio, so some images
    are refused (a square image at 480p and 81 frames is 21 x 39 x 39 tokens: odd).
    """
    if ulysses_size < 1:
        raise ConfigError(f"--ulysses_size must be >= 1, got {ulysses_size}")
    if ctx.world_size == 1 and (ulysses_size > 1 or cfg_parallel or dit_fsdp or t5_fsdp):
        raise ConfigError(
            "--ulysses_size > 1, --cfg_parallel, --dit_fsdp and --t5_fsdp need several processes: "
            "run with torchrun --nproc_per_node N generate.py ..."
        )
    if ctx.world_size % ulysses_size:
        raise ConfigError(f"--ulysses_size {ulysses_size} must divide the world size {ctx.world_size}")
    if cfg_parallel and ctx.world_size % 2:
        raise ConfigError(f"--cfg_parallel needs an even process count (2 CFG groups), got {ctx.world_size}")
    if cfg_parallel and ctx.world_size != 2 * ulysses_size:
        raise ConfigError(
            f"--cfg_parallel splits the {ctx.world_size} processes into 2 CFG groups of --ulysses_size: "
            f"pass --ulysses_size {ctx.world_size // 2}"
        )
    if t5_fsdp and t5_cpu:
        raise ConfigError("--t5_fsdp and --t5_cpu exclude each other: a sharded text encoder lives on the GPUs")
    if num_heads is not None and num_heads % ulysses_size:
        raise ConfigError(f"--ulysses_size {ulysses_size} must divide the experts' {num_heads} attention heads")
    for count in tokens:
        if count % ulysses_size:
            raise ConfigError(
                f"--ulysses_size {ulysses_size} must divide the sequence length {count} of this size and "
                "frame count (half-frame runs use two lengths; an image task's image sets the shape); pick another "
                "size, frame_num, image aspect ratio or ulysses size"
            )


def parallelize(
    pipe: WanT2V,
    ctx: DistContext,
    *,
    ulysses_size: int = 1,
    cfg_parallel: bool = False,
    dit_fsdp: bool = False,
    t5_fsdp: bool = False,
    plan: RunPlan | None = None,
) -> None:
    """Apply Ulysses sequence parallel, CFG parallel and FSDP2 to a loaded pipeline, in place, on every rank.

    The parts may still be on the CPU (load with ``placement=Placement()`` so no rank holds both full
    experts on its GPU): FSDP moves each rank's shards to its device, and the unsharded parts are
    moved here. The placement becomes "in place", since sharded modules must stay where FSDP put them.
    ``plan`` (optional) also checks that ``ulysses_size`` divides every sequence length of that run.
    ``cfg_parallel`` replaces ``pipe.velocity`` (``wan.cfg_parallel``); the loop itself is unchanged.
    """
    validate(
        ctx,
        ulysses_size=ulysses_size,
        cfg_parallel=cfg_parallel,
        dit_fsdp=dit_fsdp,
        t5_fsdp=t5_fsdp,
        t5_cpu=pipe.t5_cpu,
        num_heads=pipe.experts[HIGH].config.num_attention_heads,
        tokens=plan.sequence_lengths if plan is not None else (),
    )
    if any(expert.is_cache_enabled for expert in pipe.experts.values()) and (
        ulysses_size > 1 or cfg_parallel or dit_fsdp
    ):
        raise ConfigError(
            "step caching (--cache, --preset fast) does not work with --ulysses_size > 1, --cfg_parallel or "
            "--dit_fsdp: each rank would decide alone which blocks to skip and the ranks' collectives would "
            "stop matching; pass --cache none"
        )
    if ctx.world_size == 1:
        return
    if pipe.placement.name != Placement.name:
        logger.info("placement %s is off under torchrun: sharded modules stay on their GPUs", pipe.placement.name)
        pipe.placement = Placement(reason="torchrun")
    if cfg_parallel:
        _enable_cfg_parallel(pipe, ctx, ulysses_size)
    elif ulysses_size > 1:
        _enable_ulysses(pipe.experts.values(), ctx, ulysses_size)
    fsdp_mesh = _mesh(ctx, (ctx.world_size,), ("fsdp",), own_group=True) if dit_fsdp or t5_fsdp else None
    for expert in pipe.experts.values():
        if dit_fsdp:
            # The root's embeddings and head stay gathered between forwards: ~0.5 GB, one all-gather less per step.
            _shard(expert, expert.blocks, fsdp_mesh, reshard_root=False)
        else:
            expert.to(ctx.device)
    encoder = pipe.components.text_encoder
    if encoder is not None:
        if t5_fsdp:
            # umT5's root holds its 256k-token embedding (2 GB in bf16): resharded after the one encode.
            _shard(encoder, encoder.encoder.block, fsdp_mesh, reshard_root=True)
        else:
            encoder.to(pipe.text_device)
    if pipe.components.vae is not None:
        pipe.components.vae.to(ctx.device)
    _apply_timeout(ctx)
    logger.info(
        "rank %d/%d: ulysses %d, cfg_parallel %s, dit_fsdp %s, t5_fsdp %s",
        ctx.rank,
        ctx.world_size,
        ulysses_size,
        cfg_parallel,
        dit_fsdp,
        t5_fsdp,
    )


def _enable_cfg_parallel(pipe: WanT2V, ctx: DistContext, ulysses_size: int) -> None:
    """Two CFG groups of ``ulysses_size`` ranks, plus Ulysses over all ranks for cond-only steps."""
    from wan.cfg_parallel import CfgParallelVelocity, use_parallel_config

    mesh = _mesh(ctx, (2, 1, ulysses_size), ("cfg", "ring", "ulysses"))
    group = _context_parallel(ctx, mesh, ulysses_size) if ulysses_size > 1 else None
    heads = pipe.experts[HIGH].config.num_attention_heads
    world = None
    if heads % ctx.world_size == 0:
        world = _context_parallel(ctx, _mesh(ctx, (1, ctx.world_size), ("ring", "ulysses")), ctx.world_size)
    else:
        logger.warning(
            "cfg_parallel: %d heads do not split over %d ranks; cond-only steps run on each CFG group",
            heads,
            ctx.world_size,
        )
    first = group or world
    if first is not None:
        with _accelerator_count_for_cpu(ctx):
            for expert in pipe.experts.values():
                expert.enable_parallelism(config=first)  # checks the attention backend, installs the hooks
                use_parallel_config(expert, group)
    pipe.velocity = CfgParallelVelocity(
        pair=mesh.get_group("cfg"),
        cfg_rank=mesh.get_local_rank("cfg"),
        world_size=ctx.world_size,
        group_config=group,
        world_config=world,
    )


def _context_parallel(ctx: DistContext, mesh, ulysses_size: int):
    """A set-up diffusers ``ParallelConfig``: Ulysses of ``ulysses_size`` over ``mesh``'s (ring, ulysses) dims."""
    from diffusers import ContextParallelConfig, ParallelConfig

    config = ParallelConfig(context_parallel_config=ContextParallelConfig(ulysses_degree=ulysses_size, mesh=mesh))
    config.setup(ctx.rank, ctx.world_size, ctx.device, mesh=mesh)
    return config


def _enable_ulysses(experts: Iterable[torch.nn.Module], ctx: DistContext, ulysses_size: int) -> None:
    """diffusers context parallel on each expert, over one shared (replica, ring, ulysses) mesh."""
    from diffusers import ContextParallelConfig

    mesh = _mesh(ctx, (ctx.world_size // ulysses_size, 1, ulysses_size), ("replica", "ring", "ulysses"))
    with _accelerator_count_for_cpu(ctx):
        for expert in experts:
            expert.enable_parallelism(config=ContextParallelConfig(ulysses_degree=ulysses_size, mesh=mesh))


@contextmanager
def _accelerator_count_for_cpu(ctx: DistContext) -> Iterator[None]:
    """Let diffusers' context parallel set up on CPU (gloo).

    ``ModelMixin._resolve_parallel_config`` computes ``rank % torch.accelerator.device_count()``, which
    divides by zero on a machine without an accelerator; the device it derives is only recorded, and
    the mesh we pass is the one used. On a machine with an accelerator nothing is changed.
    """
    if ctx.device.type != "cpu" or torch.accelerator.device_count() > 0:
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda *_: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


def _mesh(ctx: DistContext, shape: tuple[int, ...], names: tuple[str, ...], *, own_group: bool = False):
    """A device mesh; ``own_group``: new process groups even where a dim spans the world.

    FSDP gets its own communicator: on the default one (which Ulysses over all ranks uses), NCCL runs
    collectives in issue order, so a prefetched weight all-gather would hold up the attention's all-to-alls.
    """
    from torch.distributed.device_mesh import init_device_mesh

    override = {name: dist.get_backend() for name in names} if own_group else None
    return init_device_mesh(ctx.device.type, shape, mesh_dim_names=names, backend_override=override)


def _shard(module: torch.nn.Module, blocks: Iterable[torch.nn.Module], mesh, *, reshard_root: bool) -> None:
    """FSDP2 per block, then the rest as the root unit, so one block's weights are gathered at a time.

    Each unit's forward issues the all-gather of the next ``FSDP_PREFETCH_BLOCKS`` blocks (the root's,
    of the first), so a block's weights arrive while the previous block computes instead of after it:
    implicit prefetch relies on the CPU running ahead, which per-block syncs can stop. Frozen
    parameters let FSDP2 gather the blocks' mixed bf16/fp32 (``_keep_in_fp32_modules``) weights.
    """
    from torch.distributed.fsdp import fully_shard

    module.requires_grad_(False)
    blocks = list(blocks)
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(module, mesh=mesh, reshard_after_forward=reshard_root)
    module.set_modules_to_forward_prefetch(blocks[:FSDP_PREFETCH_BLOCKS])
    for index, block in enumerate(blocks[:-1]):
        block.set_modules_to_forward_prefetch(blocks[index + 1 : index + 1 + FSDP_PREFETCH_BLOCKS])


def _apply_timeout(ctx: DistContext) -> None:
    """Give every process group this rank belongs to the run's timeout.

    Groups made after init (device meshes, diffusers' flattened Ulysses mesh) get c10d's default
    (10 min NCCL, 30 min gloo) instead of the default group's; there is no public setter for them.
    """
    from torch.distributed import distributed_c10d as c10d

    timeout = timedelta(seconds=ctx.timeout_s)
    for group in list(c10d._world.pg_map):
        if group is not None and not c10d._rank_not_in_group(group):
            c10d._set_pg_timeout(timeout, group)
