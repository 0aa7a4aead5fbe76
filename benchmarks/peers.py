"""The peer: diffusers' own pipeline for the task, on the same random parts, timed by the same instruments.

A ``Peer`` says how to assemble the task's diffusers pipeline from ``RandomParts`` and what the task's
call needs besides what every Wan pipeline takes; ``run_peer`` does the rest for any of them:
a warm-up run, then a timed run with text encoding, each step and the decode measured.

- T2V-A14B: ``WanPipeline`` with both experts (``boundary_ratio``).
- I2V-A14B: ``WanImageToVideoPipeline`` with both experts; Wan2.2's I2V has no CLIP image encoder.
- TI2V-5B: ``WanPipeline`` with one transformer and ``expand_timesteps=True`` (text-to-video).
- ``FewStepPeer``: any of them with a distill LoRA pair loaded into both experts and fused, sampling
  the distill schedule's 4 steps with guidance 1 (what a diffusers user runs with Wan2.2-Lightning).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
    WanPipeline,
)
from PIL import Image

from benchmarks.measure import ForwardCounter, Measurement, StepClock, free_memory, now, reset_peak_memory
from benchmarks.plan import Workload
from benchmarks.weights import LIGHTNING_FILES, TEXT_TOKENS, RandomParts
from wan.config import HIGH, LOW, TaskConfig
from wan.levers.presets import PRESETS
from wan.plan import route


class Peer(ABC):
    """How one task's diffusers pipeline is assembled and called."""

    placement = "resident (all parts on the device)"
    changes_experts = False  # whether it leaves something (a fused LoRA) on the experts

    pipeline_class: type[DiffusionPipeline] = WanPipeline

    def pipeline(self, parts: RandomParts, task: TaskConfig) -> DiffusionPipeline:
        """The pipeline on ``parts`` (all already on the device): the parts every Wan pipeline takes, the
        task's solver, then the task's own models (``models``)."""
        return self.pipeline_class(
            tokenizer=parts.tokenizer,
            text_encoder=parts.text_encoder,
            vae=parts.vae,
            scheduler=unipc(task),
            **self.models(parts, task),
        )

    @abstractmethod
    def models(self, parts: RandomParts, task: TaskConfig) -> dict[str, Any]:
        """The pipeline's denoising models and how it routes between them."""

    def inputs(self, work: Workload) -> dict[str, Any]:
        """The call's inputs besides steps and seed: what every Wan pipeline takes, then the task's own."""
        width, height = work.task.parse_size(work.size)
        return {
            "prompt": work.prompt,
            "negative_prompt": work.task.negative_prompt,
            "height": height,
            "width": width,
            "num_frames": work.frame_num,
            "guidance_scale": work.task.guide_scale_high,
            "max_sequence_length": TEXT_TOKENS,
            **self.task_inputs(work),
        }

    def task_inputs(self, work: Workload) -> dict[str, Any]:
        """The task's own inputs (a second guidance scale, the image)."""
        return {}

    def steps(self, work: Workload) -> int:
        """Steps of the timed run."""
        return work.steps

    def expert(self, timestep: float, task: TaskConfig) -> str:
        """Which expert ran the step at ``timestep`` (the step clock's label)."""
        return route(timestep, task.boundary, task.num_train_timesteps)

    def generation(self) -> dict[str, Any]:
        """The schedule it samples, where it is not the task's (the report's record)."""
        return {}


def unipc(task: TaskConfig) -> UniPCMultistepScheduler:
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=task.sample_shift
    )


class WanT2VPeer(Peer):
    """``WanPipeline`` with both experts: high-noise ``transformer``, low-noise ``transformer_2``."""

    def models(self, parts: RandomParts, task: TaskConfig) -> dict[str, Any]:
        experts = {"transformer": parts.experts[HIGH], "transformer_2": parts.experts[LOW]}
        return {**experts, "boundary_ratio": task.boundary}

    def task_inputs(self, work: Workload) -> dict[str, Any]:
        return {"guidance_scale_2": work.task.guide_scale_low}


class WanI2VPeer(WanT2VPeer):
    """``WanImageToVideoPipeline`` with both experts and no image encoder (Wan2.2's I2V conditions on the
    image latent only)."""

    pipeline_class = WanImageToVideoPipeline

    def task_inputs(self, work: Workload) -> dict[str, Any]:
        if work.image is None:
            raise ValueError("the image-to-video peer needs the workload's image")
        with Image.open(work.image) as image:
            return {**super().task_inputs(work), "image": image.convert("RGB")}


class WanTI2VPeer(Peer):
    """``WanPipeline`` with TI2V-5B's one transformer and per-token timesteps (``expand_timesteps``)."""

    def models(self, parts: RandomParts, task: TaskConfig) -> dict[str, Any]:
        return {"transformer": parts.experts[HIGH], "transformer_2": None, "expand_timesteps": True}


class FewStepPeer(Peer):
    """The task's peer with a distill LoRA pair (``LIGHTNING_FILES`` in ``lora_dir``) fused into both experts,
    sampling the lightning preset's steps and shift with Euler and guidance 1."""

    changes_experts = True
    schedule: dict[str, Any] = dict(PRESETS["lightning"].generation)  # CLI-named: steps, shift, guidance

    def __init__(self, base: Peer, lora_dir: Path):
        self.base, self.lora_dir = base, lora_dir

    def models(self, parts: RandomParts, task: TaskConfig) -> dict[str, Any]:
        return self.base.models(parts, task)

    def pipeline(self, parts: RandomParts, task: TaskConfig) -> DiffusionPipeline:
        pipeline = self.base.pipeline(parts, task)
        pipeline.scheduler = FlowMatchEulerDiscreteScheduler(shift=self.schedule["sample_shift"])
        pipeline.load_lora_weights(str(self.lora_dir / LIGHTNING_FILES[HIGH]), adapter_name="distill_high")
        pipeline.load_lora_weights(
            str(self.lora_dir / LIGHTNING_FILES[LOW]), adapter_name="distill_low", load_into_transformer_2=True
        )
        pipeline.fuse_lora(components=["transformer", "transformer_2"], lora_scale=1.0)
        pipeline.unload_lora_weights()
        return pipeline

    def task_inputs(self, work: Workload) -> dict[str, Any]:
        guide = float(self.schedule["sample_guide_scale"])
        inputs = {**self.base.task_inputs(work), "guidance_scale": guide}
        if "guidance_scale_2" in inputs:
            inputs["guidance_scale_2"] = guide
        return inputs

    def steps(self, work: Workload) -> int:
        return int(self.schedule["sample_steps"])

    def expert(self, timestep: float, task: TaskConfig) -> str:
        return self.base.expert(timestep, task)

    def generation(self) -> dict[str, Any]:
        return dict(self.schedule)


PEERS: dict[str, type[Peer]] = {"t2v-A14B": WanT2VPeer, "i2v-A14B": WanI2VPeer, "ti2v-5B": WanTI2VPeer}
"""The peer of each benchmarked task, by task name."""


def run_peer(
    peer: Peer, parts: RandomParts, counter: ForwardCounter, work: Workload, device: torch.device
) -> Measurement:
    """The peer end to end (text encoding, sampling, decode to numpy) after a warm-up run, everything resident."""
    for module in parts.modules():
        module.to(device)
    start = now(device)
    pipeline = peer.pipeline(parts, work.task)
    pipeline_s = now(device) - start
    pipeline.set_progress_bar_config(disable=True)
    clock = StepClock(device, counter)
    encode, text_seconds = pipeline.encode_prompt, [0.0]

    def timed_encode(*args, **kwargs):
        start = now(device)
        out = encode(*args, **kwargs)
        text_seconds[0] += now(device) - start
        clock.restart()
        return out

    def on_step_end(_pipe, _index: int, timestep: torch.Tensor, _kwargs: dict) -> dict:
        clock.mark(peer.expert(float(timestep), work.task))
        return {}

    pipeline.encode_prompt = timed_encode
    inputs = peer.inputs(work)

    def call(steps: int) -> Any:
        return pipeline(
            **inputs,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(work.seed),
            output_type="np",
            return_dict=False,
            callback_on_step_end=on_step_end,
        )[0]

    steps = peer.steps(work)
    start = now(device)
    call(min(work.warmup_steps, steps))
    warmup_s = now(device) - start
    clock.marks.clear()
    text_seconds[0] = 0.0
    counter.reset()
    reset_peak_memory(device)
    start = now(device)
    video = call(steps)
    end = now(device)
    stages = {
        "text_encoding": text_seconds[0],
        "high_noise": clock.stage_seconds(HIGH),
        "low_noise": clock.stage_seconds(LOW),
        "vae_decode": end - clock.last,  # diffusers' decode and its conversion to numpy
    }
    finite = bool(torch.isfinite(torch.from_numpy(video)).all())
    info = {
        "kind": "peer",
        "pipeline": type(pipeline).__name__,
        "scheduler": type(pipeline.scheduler).__name__,
        "placement": peer.placement,
        "levers": {},
        "vae_tiling": parts.vae.use_tiling,
        "generation": peer.generation(),
        "generation_released": peer.generation(),
    }
    pipeline = video = None  # the pipeline holds references to every part
    free_memory(device)
    return Measurement(info, {"pipeline_s": pipeline_s, "warmup_s": warmup_s}, end - start, stages, clock, finite)
