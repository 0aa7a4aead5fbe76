"""The peer: diffusers' own pipeline for the task, on the same random parts, timed by the same instruments.

A ``Peer`` says how to assemble the task's diffusers pipeline from ``RandomParts`` and what the task's
call needs besides what every Wan pipeline takes; ``run_peer`` does the rest for any of them:
a warm-up run, then a timed run with text encoding, each step and the decode measured.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from diffusers import DiffusionPipeline, UniPCMultistepScheduler, WanPipeline

from benchmarks.measure import ForwardCounter, Measurement, StepClock, free_memory, now, reset_peak_memory
from benchmarks.plan import GUIDE_HIGH, GUIDE_LOW, Workload
from benchmarks.weights import TEXT_TOKENS, RandomParts
from wan.config import HIGH, LOW, TaskConfig
from wan.plan import route


class Peer(ABC):
    """How one task's diffusers pipeline is assembled and called."""

    placement = "resident (all parts on the device)"

    @abstractmethod
    def pipeline(self, parts: RandomParts, task: TaskConfig) -> DiffusionPipeline:
        """The pipeline on ``parts`` (all already on the device)."""

    @abstractmethod
    def inputs(self, work: Workload) -> dict[str, Any]:
        """The call's task inputs (prompt, size, frames, guidance, conditioning), besides steps and seed."""

    def expert(self, timestep: float, task: TaskConfig) -> str:
        """Which expert ran the step at ``timestep`` (the step clock's label)."""
        return route(timestep, task.boundary, task.num_train_timesteps)


class WanT2VPeer(Peer):
    """``WanPipeline`` with both experts: high-noise ``transformer``, low-noise ``transformer_2``."""

    def pipeline(self, parts: RandomParts, task: TaskConfig) -> DiffusionPipeline:
        return WanPipeline(
            tokenizer=parts.tokenizer,
            text_encoder=parts.text_encoder,
            vae=parts.vae,
            scheduler=UniPCMultistepScheduler(
                prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=task.sample_shift
            ),
            transformer=parts.experts[HIGH],
            transformer_2=parts.experts[LOW],
            boundary_ratio=task.boundary,
        )

    def inputs(self, work: Workload) -> dict[str, Any]:
        width, height = work.task.parse_size(work.size)
        return {
            "prompt": work.prompt,
            "negative_prompt": work.task.negative_prompt,
            "height": height,
            "width": width,
            "num_frames": work.frame_num,
            "guidance_scale": GUIDE_HIGH,
            "guidance_scale_2": GUIDE_LOW,
            "max_sequence_length": TEXT_TOKENS,
        }


PEERS: dict[str, type[Peer]] = {"t2v-A14B": WanT2VPeer}
"""The peer of each benchmarked task, by task name."""


def run_peer(
    peer: Peer, parts: RandomParts, counter: ForwardCounter, work: Workload, device: torch.device
) -> Measurement:
    """The peer end to end (text encoding, sampling, decode to numpy) after a warm-up run, everything resident."""
    for module in parts.modules():
        module.to(device)
    pipeline = peer.pipeline(parts, work.task)
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

    start = now(device)
    call(work.warmup_steps)
    warmup_s = now(device) - start
    clock.marks.clear()
    text_seconds[0] = 0.0
    counter.reset()
    reset_peak_memory(device)
    start = now(device)
    video = call(work.steps)
    end = now(device)
    stages = {
        "text_encoding": text_seconds[0],
        "high_noise": clock.stage_seconds(HIGH),
        "low_noise": clock.stage_seconds(LOW),
        "vae_decode": end - clock.last,  # diffusers' decode and its conversion to numpy
    }
    finite = bool(torch.isfinite(torch.from_numpy(video)).all())
    pipeline = video = None  # the pipeline holds references to every part
    free_memory(device)
    info = {"kind": "peer", "placement": peer.placement, "levers": {}, "generation": {}}
    return Measurement(info, {"warmup_s": warmup_s}, end - start, stages, clock, finite)
