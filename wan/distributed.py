"""Multi-GPU generation under torchrun: Ulysses sequence parallel and FSDP2 sharding.

Every rank runs the same loop on the same full latent (same seed, same plan); inside each expert,
diffusers' context parallel hooks split the tokens across the Ulysses group before the first block,
all-to-all the heads around self-attention, and gather the tokens after ``proj_out``, so the loop in
``wan.text2video`` needs no change. FSDP2 shards the weights of the experts (and optionally of the
umT5 encoder) block by block over all ranks to save memory. Rank 0 alone decodes and writes.

With ``ulysses_size`` smaller than the world size, the ranks form ``world / ulysses_size`` replica
groups that compute the same video (FSDP still shards weights over every rank).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from wan.config import ConfigError, TaskConfig
from wan.frames import half_frame_count, latent_frame_count
from wan.guidance import HIGH
from wan.placement import Placement
from wan.text2video import GenerationResult, GenerationSettings, WanT2V

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: its rank, the world and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")


def init_distributed(device_type: str | None = None) -> DistContext:
    """Join the torchrun process group (NCCL on CUDA, gloo on CPU); a single process when not under torchrun.

    ``device_type`` forces "cuda" or "cpu"; by default CUDA is used when available.
    """
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
        )
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group cleanly (NCCL warns about leaked communicators otherwise)."""
    if ctx.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


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


def token_counts(config: TaskConfig, settings: GenerationSettings) -> tuple[int, ...]:
    """Sequence lengths the experts will see in this run: full frames, plus half frames with half-frame generation."""
    s = settings.resolved(config)
    width, height = config.parse_size(s.size)
    per_frame = (height // config.vae_stride[1] // config.patch_size[1]) * (
        width // config.vae_stride[2] // config.patch_size[2]
    )
    frames = latent_frame_count(s.frame_num, config.vae_stride[0])
    counts = [frames * per_frame]
    if s.half_frame:
        counts.append(half_frame_count(frames) * per_frame)
    return tuple(counts)


def validate(
    ctx: DistContext,
    *,
    ulysses_size: int = 1,
    dit_fsdp: bool = False,
    t5_fsdp: bool = False,
    t5_cpu: bool = False,
    num_heads: int | None = None,
    tokens: Iterable[int] = (),
) -> None:
    """Refuse multi-GPU settings that cannot work, with one-line errors; cheap, so call it before loading."""
    if ulysses_size < 1:
        raise ConfigError(f"--ulysses_size must be >= 1, got {ulysses_size}")
    if ctx.world_size == 1 and (ulysses_size > 1 or dit_fsdp or t5_fsdp):
        raise ConfigError(
            "--ulysses_size > 1, --dit_fsdp and --t5_fsdp need several processes: "
            "run with torchrun --nproc_per_node N generate.py ..."
        )
    if ctx.world_size % ulysses_size:
        raise ConfigError(f"--ulysses_size {ulysses_size} must divide the world size {ctx.world_size}")
    if t5_fsdp and t5_cpu:
        raise ConfigError("--t5_fsdp and --t5_cpu exclude each other: a sharded text encoder lives on the GPUs")
    if num_heads is not None and num_heads % ulysses_size:
        raise ConfigError(f"--ulysses_size {ulysses_size} must divide the experts' {num_heads} attention heads")
    for count in tokens:
        if count % ulysses_size:
            raise ConfigError(
                f"--ulysses_size {ulysses_size} must divide the sequence length {count} of this size and "
                "frame count (half-frame runs use two lengths); pick another size, frame_num or ulysses size"
            )


def parallelize(
    pipe: WanT2V,
    ctx: DistContext,
    *,
    ulysses_size: int = 1,
    dit_fsdp: bool = False,
    t5_fsdp: bool = False,
    settings: GenerationSettings | None = None,
) -> None:
    """Apply Ulysses sequence parallel and FSDP2 to a loaded pipeline, in place, on every rank.

    The parts may still be on the CPU (load with ``placement=Placement()`` so no rank holds both full
    experts on its GPU): FSDP moves each rank's shards to its device, and the unsharded parts are
    moved here. The placement becomes "in place", since sharded modules must stay where FSDP put them.
    ``settings`` (optional) also checks that ``ulysses_size`` divides every sequence length of that run.
    """
    validate(
        ctx,
        ulysses_size=ulysses_size,
        dit_fsdp=dit_fsdp,
        t5_fsdp=t5_fsdp,
        t5_cpu=pipe.t5_cpu,
        num_heads=pipe.experts[HIGH].config.num_attention_heads,
        tokens=token_counts(pipe.config, settings) if settings is not None else (),
    )
    if ctx.world_size == 1:
        return
    if pipe.placement.name != Placement.name:
        logger.info("placement %s is off under torchrun: sharded modules stay on their GPUs", pipe.placement.name)
        pipe.placement = Placement(reason="torchrun")
    if ulysses_size > 1:
        _enable_ulysses(pipe.experts.values(), ctx, ulysses_size)
    fsdp_mesh = _mesh(ctx, (ctx.world_size,), ("fsdp",)) if dit_fsdp or t5_fsdp else None
    for expert in pipe.experts.values():
        if dit_fsdp:
            _shard(expert, expert.blocks, fsdp_mesh)
        else:
            expert.to(ctx.device)
    encoder = pipe.parts.text_encoder
    if encoder is not None:
        if t5_fsdp:
            _shard(encoder, encoder.encoder.block, fsdp_mesh)
        else:
            encoder.to(pipe.text_device)
    if pipe.parts.vae is not None:
        pipe.parts.vae.to(ctx.device)
    logger.info(
        "rank %d/%d: ulysses %d, dit_fsdp %s, t5_fsdp %s", ctx.rank, ctx.world_size, ulysses_size, dit_fsdp, t5_fsdp
    )


def generate(
    pipe: WanT2V, settings: GenerationSettings, ctx: DistContext, *, progress: bool = True
) -> GenerationResult:
    """Text -> video on every rank; the collectives need all ranks for text encoding and sampling.

    Rank 0 alone decodes: its result holds the video, the others' an empty tensor.
    """
    s = settings.resolved(pipe.config)
    start = _now(ctx.device)
    context = pipe.encode_text([s.prompt, s.negative_prompt])
    text_seconds = _now(ctx.device) - start
    result = pipe.sample(s, context[:1], context[1:], progress=progress and is_main(ctx))
    timings = {"text_encoding": text_seconds, **result.timings}
    if is_main(ctx):
        start = _now(ctx.device)
        result.video = pipe.decode(result.latents.to(ctx.device)).cpu()
        timings["vae_decode"] = _now(ctx.device) - start
    result.timings = timings
    if ctx.world_size > 1:
        dist.barrier()
    return result


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


def _mesh(ctx: DistContext, shape: tuple[int, ...], names: tuple[str, ...]):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(ctx.device.type, shape, mesh_dim_names=names)


def _shard(module: torch.nn.Module, blocks: Iterable[torch.nn.Module], mesh) -> None:
    """FSDP2 per block, then the rest as the root unit, so one block's weights are gathered at a time.

    Frozen parameters let FSDP2 gather the blocks' mixed bf16/fp32 (``_keep_in_fp32_modules``) weights.
    """
    from torch.distributed.fsdp import fully_shard

    module.requires_grad_(False)
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(module, mesh=mesh)


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
