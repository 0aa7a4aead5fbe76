"""LoRA cost at A14B size: a random rank-r LoRA in the official naming, checked and fused by the engine's path.

``run`` builds two random experts, times their forwards, writes the LoRA file, then times
``wan.lora.check_loras`` (read, recognise, convert, sha256) and ``wan.lora.apply_loras`` (peft inject,
fuse, unload) and the forwards again: fused weights are plain ``nn.Linear``, so they should cost the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from benchmarks.measure import forward_seconds, now, peak_memory_gb
from benchmarks.weights import build_expert, expert_config, random_wan_lora, text_embeddings
from wan.checkpoints import WanComponents
from wan.config import HIGH, LOW, load_task_config
from wan.frames import latent_frame_count
from wan.lora import BOTH, LoraSpec, apply_loras, check_loras
from wan.placement import ModelOffload
from wan.text2video import WanT2V
from wan.video import save_json

logger = logging.getLogger("benchmarks")


def run(args: argparse.Namespace) -> dict[str, Any]:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    config = expert_config(args.tiny, args.layers)
    task = load_task_config("t2v-A14B")
    task = dataclasses.replace(task, sizes=(args.size,), default_size=args.size, frame_num=args.frame_num)
    width, height = task.parse_size(args.size)
    frames = latent_frame_count(args.frame_num, task.vae_stride[0])
    report: dict[str, Any] = {
        "command": " ".join([sys.executable, *sys.argv]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})",
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "setup": {
            "rank": args.rank,
            "dtype": args.dtype,
            "model_config": config,
            "size": args.size,
            "frames": frames,
            "offload_model": args.offload_model,
        },
    }

    def save() -> None:
        save_json(report, args.out)

    start = now(device)
    experts = {name: build_expert(config, device, dtype, seed, 0.02) for seed, name in enumerate((HIGH, LOW))}
    report["build_s"] = now(device) - start
    _, stride_h, stride_w = task.vae_stride
    shape = (1, config["in_channels"], frames, height // stride_h, width // stride_w)
    hidden = torch.randn(shape, device=device, dtype=dtype)
    context = text_embeddings(120, config["text_dim"], device, dtype, 10)
    report["forward_s"] = {"base": {n: forward_seconds(e, hidden, context, args.repeats) for n, e in experts.items()}}
    save()
    components = WanComponents(None, None, None, experts[HIGH], experts[LOW], layout="diffusers")
    # --offload_model: the official --offload_model True, the experts wait in CPU memory while the LoRA fuses
    placement = ModelOffload(reason="--offload_model") if args.offload_model else None
    pipe = WanT2V(task, components, device=device, placement=placement)

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "random_rank_lora.safetensors"
        save_file(random_wan_lora(config, args.rank, dtype, seed=3), path)
        report["lora_file_mb"] = path.stat().st_size / 2**20
        start = time.perf_counter()
        files = check_loras([LoraSpec(path, 1.0, BOTH)])
        report["check_s"] = time.perf_counter() - start  # read, recognise, convert, sha256: before the model loads
        probe = experts[HIGH].blocks[0].attn1.to_q.weight[:4, :4].float().clone()
        start = now(device)
        apply_loras(pipe, files)
        report["fuse_both_experts_s"] = now(device) - start
    report["load_and_fuse_s"] = report["check_s"] + report["fuse_both_experts_s"]
    for expert in experts.values():
        expert.to(device)
    report["weights_changed"] = not torch.equal(probe, experts[HIGH].blocks[0].attn1.to_q.weight[:4, :4].float())
    report["peft_layers_left"] = sum("peft" in type(m).__module__ for e in experts.values() for m in e.modules())
    report["forward_s"]["fused"] = {n: forward_seconds(e, hidden, context, args.repeats) for n, e in experts.items()}
    report["fused_over_base"] = {n: report["forward_s"]["fused"][n] / report["forward_s"]["base"][n] for n in experts}
    report["peak_memory_gb"] = peak_memory_gb(device)
    save()
    logger.info(
        "rank-%d LoRA (%.0f MB): check %.1f s + fuse into both experts %.1f s; forward fused/base %s",
        args.rank,
        report["lora_file_mb"],
        report["check_s"],
        report["fuse_both_experts_s"],
        {n: round(v, 3) for n, v in report["fused_over_base"].items()},
    )
    return report
