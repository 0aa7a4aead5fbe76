"""LoRA cost at Wan2.2-A14B size: seconds to load and fuse a rank-64 LoRA into both experts, and a forward's time
with the fused LoRA against the base model's (should be equal: fused weights are plain ``nn.Linear``).

Two random experts with the A14B config are built on the device (``bench_a14b.build_expert``); a random
LoRA on every attention and FFN projection of every block is written in the official-Wan naming
(``diffusion_model.blocks.N.self_attn.q.lora_down.weight`` + ``alpha``, as step-distillation LoRAs ship),
then timed through the engine's own path: ``wan.lora.check_loras`` (read, recognise, convert, sha256)
and ``wan.lora.apply_loras`` (peft inject, fuse, unload). The JSON is written after every stage.

    python scripts/bench_lora.py --out docs/results/bench_lora_h200.json        # GPU, A14B size
    python scripts/bench_lora.py --offload_model --out bench_lora_offload.json  # experts parked on the CPU
    python scripts/bench_lora.py --tiny --device cpu --dtype float32 --out t.json   # CPU check
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_a14b import A14B_CONFIG, TINY_OVERRIDES, build_expert, now, peak_memory_gb, text_embeddings  # noqa: E402

from wan.checkpoints import WanComponents  # noqa: E402
from wan.config import (  # noqa: E402
    HIGH,
    LOW,
    load_task_config,  # noqa: E402
)
from wan.frames import latent_frame_count  # noqa: E402
from wan.lora import BOTH, LoraSpec, apply_loras, check_loras  # noqa: E402
from wan.placement import ModelOffload  # noqa: E402
from wan.text2video import WanT2V  # noqa: E402

logger = logging.getLogger("bench_lora")

WAN_LAYERS = {
    "self_attn.q": "inner",
    "self_attn.k": "inner",
    "self_attn.v": "inner",
    "self_attn.o": "inner",
    "cross_attn.q": "inner",
    "cross_attn.k": "inner",
    "cross_attn.v": "inner",
    "cross_attn.o": "inner",
    "ffn.0": "up",
    "ffn.2": "down",
}
"""Every projection of a block by its official name, and its shape kind (inner: dim x dim)."""


def random_wan_lora(config: dict[str, Any], rank: int, dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    """A rank-``rank`` LoRA on every block projection, in the official-Wan naming with alpha = rank."""
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    shapes = {"inner": (dim, dim), "up": (config["ffn_dim"], dim), "down": (dim, config["ffn_dim"])}
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for block in range(config["num_layers"]):
        for name, kind in WAN_LAYERS.items():
            out_features, in_features = shapes[kind]
            prefix = f"diffusion_model.blocks.{block}.{name}"
            down = torch.randn(rank, in_features, generator=generator) * 0.01
            tensors[f"{prefix}.lora_down.weight"] = down.to(dtype)
            up = torch.randn(out_features, rank, generator=generator) * 0.01
            tensors[f"{prefix}.lora_up.weight"] = up.to(dtype)
            tensors[f"{prefix}.alpha"] = torch.tensor(float(rank))
    return tensors


def forward_seconds(expert, hidden: torch.Tensor, context: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward (after one warm-up)."""
    t = torch.full((1,), 900.0, device=hidden.device)
    seconds = []
    with torch.no_grad():
        for k in range(repeats + 1):
            start = now(hidden.device)
            expert(hidden_states=hidden, timestep=t, encoder_hidden_states=context, return_dict=False)
            if k:
                seconds.append(now(hidden.device) - start)
    return statistics.median(seconds)


def run(args: argparse.Namespace) -> dict[str, Any]:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    config = dict(A14B_CONFIG, **(TINY_OVERRIDES if args.tiny else {}))
    config["num_layers"] = args.layers if args.layers is not None else (2 if args.tiny else 40)
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
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    start = now(device)
    experts = {name: build_expert(config, device, dtype, seed, 0.02) for seed, name in enumerate((HIGH, LOW))}
    report["build_s"] = now(device) - start
    hidden = torch.randn(1, 16, frames, height // 8, width // 8, device=device, dtype=dtype)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--size", default="832*480", help="W*H of the timed forwards")
    p.add_argument("--frame_num", type=int, default=81)
    p.add_argument("--repeats", type=int, default=3, help="timed forwards per expert, before and after fusing")
    p.add_argument("--layers", type=int, default=None, help="transformer blocks (default 40; 2 with --tiny)")
    p.add_argument("--tiny", action="store_true", help="toy dims for a CPU check")
    p.add_argument("--offload_model", action="store_true", help="experts on the CPU while the LoRA fuses")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--out", default="bench_lora.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    report = run(args)
    return 0 if report["weights_changed"] and not report["peft_layers_left"] else 1


if __name__ == "__main__":
    sys.exit(main())
