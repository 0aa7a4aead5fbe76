"""The engine: the one way from resolved options to a ready pipeline, and from settings to a video.

``build_engine`` loads the checkpoint, places its parts for the largest run it will serve, fuses the
LoRAs, installs the speed levers and (under torchrun) shards it; the order matters (float8 and
compilation must see the fused weights; FSDP and Ulysses see plain modules). The CLI, batch runs,
multi-GPU ranks, the benchmarks, the service and Ray workers all call it, so none of them rebuilds
the setup by hand.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from wan import distributed
from wan.conditioning import Conditioning
from wan.config import HIGH, LOW, TaskConfig
from wan.levers import apply_levers
from wan.levers.cache import cache_settings, counting_computed
from wan.lora import apply_loras, lora_record
from wan.options import EngineOptions
from wan.placement import Placement, apply_placement, choose_placement
from wan.plan import RunPlan, StepPlan
from wan.settings import GenerationSettings
from wan.text2video import GenerationResult, WanT2V

logger = logging.getLogger(__name__)


class Engine:
    """A loaded, placed, LoRA'd and levered pipeline, with the options it was built from."""

    def __init__(
        self,
        options: EngineOptions,
        pipe: WanT2V,
        load_timings: dict[str, float],
        ctx: distributed.DistContext | None = None,
    ):
        self.options = options
        self.pipe = pipe
        self.load_timings = load_timings
        self.ctx = ctx or distributed.DistContext(device=pipe.device)

    @property
    def config(self) -> TaskConfig:
        return self.options.config

    @property
    def is_main(self) -> bool:
        """The process that decodes and writes (rank 0; the only one outside torchrun)."""
        return distributed.is_main(self.ctx)

    def plan(self, settings: GenerationSettings | RunPlan) -> RunPlan:
        return self.pipe.plan(settings)

    def generate(
        self,
        settings: GenerationSettings | RunPlan,
        *,
        progress: bool = True,
        on_step: Callable[[StepPlan, torch.Tensor], None] | None = None,
        conditioning: Conditioning | None = None,
    ) -> GenerationResult:
        """One video. Under torchrun every rank samples and only the main one decodes (its result holds the
        video); the others do not wait for the decode, so the collectives' timeout need not cover it."""
        plan = self.plan(settings)
        with counting_computed(self.pipe) as computed:
            result = self.pipe.generate(
                plan,
                conditioning=conditioning,
                progress=progress and self.is_main,
                on_step=on_step,
                decode=self.is_main,
            )
        result.computed_forwards = dict(computed)
        return result

    def sidecar_context(self) -> dict[str, Any]:
        return sidecar_context(self.options)


def sidecar_context(options: EngineOptions) -> dict[str, Any]:
    """What the sidecar records besides the video's own settings and timings."""
    cache = options.levers.cache
    return {
        "task": options.config.task,
        "ckpt_dir": str(options.ckpt_dir),
        "loras": lora_record(options.loras),
        "options": {
            **options.record(),
            "cache_settings": cache_settings(cache, options.ckpt_dir, (HIGH, LOW)) if cache else None,
        },
    }


def placement_shape(config: TaskConfig, runs: Sequence[RunPlan]) -> dict[str, int]:
    """Token count and video shape of the run that needs the most memory, for the placement estimate."""

    def shape(plan: RunPlan) -> dict[str, int]:
        width, height = config.parse_size(plan.settings.size)
        tokens = plan.geometry.full_tokens
        return {"tokens": tokens, "frames": plan.settings.frame_num, "height": height, "width": width}

    empty = {"tokens": 0, "frames": 1, "height": 0, "width": 0}
    return max((shape(p) for p in runs), key=lambda d: d["tokens"], default=empty)


def build_engine(
    options: EngineOptions,
    runs: Sequence[RunPlan] = (),
    ctx: distributed.DistContext | None = None,
) -> Engine:
    """Load -> place (sized for the largest of ``runs``; not under torchrun, where sharding places) ->
    fuse LoRAs -> levers -> shard. Returns the engine with the seconds of loading and of fusing."""
    config = options.config
    logger.info("loading %s from %s on %s", config.task, options.ckpt_dir, options.device)
    start = time.perf_counter()
    pipe = WanT2V.from_pretrained(
        config,
        options.ckpt_dir,
        device=options.device,
        convert_model_dtype=options.convert_model_dtype,
        placement=Placement(reason="loaded on the CPU"),
        t5_cpu=options.t5_cpu,
    )
    sharded = ctx is not None and ctx.world_size > 1
    if not sharded:
        apply_placement(pipe, choose_placement(pipe, options.placement, **placement_shape(config, runs)))
    timings = {"load": time.perf_counter() - start}
    if options.loras:
        start = time.perf_counter()
        apply_loras(pipe, list(options.loras))  # before parallelize: FSDP and Ulysses then see plain fused weights
        timings["lora_fuse"] = time.perf_counter() - start
    apply_levers(pipe, options.levers)
    if ctx is not None:
        parallel = options.parallel
        distributed.parallelize(
            pipe,
            ctx,
            ulysses_size=parallel.ulysses_size,
            cfg_parallel=parallel.cfg_parallel,
            dit_fsdp=parallel.dit_fsdp,
            t5_fsdp=parallel.t5_fsdp,
            plan=max(runs, key=lambda p: p.geometry.full_tokens, default=None),
        )
    return Engine(options, pipe, timings, ctx)
