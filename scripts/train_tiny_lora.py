"""Train the shipped example LoRA: t2v-tiny's world with a blue background instead of grey.

One rank-8 LoRA on the attention projections, shared by both experts (its parameters are tied,
so the one file works with ``--lora`` on both), trained with the same rectified-flow objective as
``scripts/train_tiny.py`` (its sigma sampling and expert ranges) on clips of the tiny world
rendered with ``BLUE`` as background. Short clips (9 frames, encoded once) keep it to minutes on
a CPU; the experts see any frame count at inference (``--crop`` trains on latent windows instead,
cheaper per step, but the shapes lose their context). The tiny VAE only ever saw grey backgrounds:
it decodes these blue clips themselves brighter and with halos (15 dB), so the target is
approximate. The file is saved in diffusers naming (alpha = rank), then both the base and the
LoRA-fused model sample held-out prompts and the script records the median (background) colour
of each, the LoRA's check, next to the file.

    nice -n 10 python scripts/train_tiny_lora.py                           # -> models/loras/, ~15 min
    python scripts/train_tiny_lora.py --quick --out /tmp/lora.safetensors  # a CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_tiny, when imported by the tests

from train_tiny import NUM_TRAIN_TIMESTEPS, boundary_uniform, sigma_from_uniform  # noqa: E402

from wan.config import (  # noqa: E402
    HIGH,
    LOW,
    load_task_config,  # noqa: E402
)
from wan.eval.tiny_world import BACKGROUND, held_out_prompts, render_scenes, sample_scene  # noqa: E402
from wan.lora import BOTH, LoraSpec, apply_loras, check_loras  # noqa: E402
from wan.settings import GenerationSettings  # noqa: E402
from wan.text2video import WanT2V  # noqa: E402

logger = logging.getLogger("train_tiny_lora")

REPO_ROOT = Path(__file__).resolve().parent.parent
BLUE: tuple[float, float, float] = (0.10, 0.22, 0.62)
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # self- and cross-attention of every block


def add_shared_lora(high: torch.nn.Module, low: torch.nn.Module, rank: int) -> list[torch.nn.Parameter]:
    """One LoRA on both experts: peft adapters on each, the low expert's tied to the high one's."""
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights=True)
    high.add_adapter(config)
    low.add_adapter(config)
    low_layers = dict(low.named_modules())
    params = []
    for name, layer in high.named_modules():
        if isinstance(layer, LoraLayer):
            twin = low_layers[name]
            twin.lora_A["default"].weight = layer.lora_A["default"].weight
            twin.lora_B["default"].weight = layer.lora_B["default"].weight
            params += [layer.lora_A["default"].weight, layer.lora_B["default"].weight]
    return params


@torch.no_grad()
def encode_clips(pipe: WanT2V, count: int, frames: int, size: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """Normalised latents [N, C, T, h, w] of blue-background train clips, and their captions."""
    vae = pipe.components.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    rng = random.Random(seed)
    scenes = [sample_scene(rng, "train") for _ in range(count)]
    latents = []
    for start in range(0, count, 16):
        clips = render_scenes(scenes[start : start + 16], frames, size, size, background=BLUE)
        latents.append((vae.encode(clips).latent_dist.mode() - mean) / std)
    return torch.cat(latents), [s.text for s in scenes]


def random_crop(latents: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One window of ``size`` x ``size`` latent pixels, the same for the whole batch (0: no crop)."""
    height, width = latents.shape[-2:]
    if not size or size >= min(height, width):
        return latents
    top, left = (int(torch.randint(n - size + 1, (1,), generator=generator)) for n in (height, width))
    return latents[..., top : top + size, left : left + size]


def train(pipe: WanT2V, args: argparse.Namespace) -> dict:
    """Flow matching on both experts' noise ranges per step, one optimizer over the shared LoRA."""
    high, low = pipe.experts[HIGH], pipe.experts[LOW]
    params = add_shared_lora(high, low, args.rank)
    for expert in (high, low):
        expert.train()
    start = time.monotonic()
    latents, captions = encode_clips(pipe, args.clips, args.frames, args.size, args.seed)
    logger.info("encoded %d clips of %d frames in %.0f s", args.clips, args.frames, time.monotonic() - start)
    with torch.no_grad():
        table = pipe.encode_text(["", *captions])  # row 0: the empty prompt, for caption dropout
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)
    u_boundary = boundary_uniform()
    ranges = {HIGH: (u_boundary, 1.0), LOW: (0.0, u_boundary)}
    deadline = time.monotonic() + 60 * args.time_budget_min
    losses, step = [], 0
    while step < args.steps and (step == 0 or time.monotonic() < deadline):
        index = torch.randint(len(captions), (args.batch,), generator=generator)
        x0 = random_crop(latents[index], args.crop, generator)
        dropped = torch.rand(args.batch, generator=generator) < 0.1
        context = table[torch.where(dropped, torch.zeros_like(index), index + 1)]
        total = 0.0
        optimizer.zero_grad(set_to_none=True)
        for name, expert in ((HIGH, high), (LOW, low)):
            lo, hi = ranges[name]
            sigma = sigma_from_uniform(lo + (hi - lo) * torch.rand(args.batch, generator=generator))
            noise = torch.randn(x0.shape, generator=generator)
            s = sigma.view(-1, 1, 1, 1, 1)
            pred = expert(
                hidden_states=(1 - s) * x0 + s * noise,
                timestep=sigma * NUM_TRAIN_TIMESTEPS,
                encoder_hidden_states=context,
                return_dict=False,
            )[0]
            loss = F.mse_loss(pred, noise - x0)
            loss.backward()
            total += loss.item()
        optimizer.step()
        losses.append(total / 2)
        step += 1
        if step % 10 == 0:
            logger.info("step %d: loss %.4f", step, sum(losses[-10:]) / 10)
    for expert in (high, low):
        expert.eval()
    return {"steps": step, "loss_first_25": _mean(losses[:25]), "loss_last_25": _mean(losses[-25:])}


def save_lora(expert: torch.nn.Module, path: Path) -> int:
    """The adapter in diffusers naming (``transformer.<module>.lora_A.weight``), fp16; returns bytes."""
    tensors = {f"transformer.{k}": v.detach().half().contiguous() for k, v in get_peft_model_state_dict(expert).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path, metadata={"format": "pt", "trained_by": "scripts/train_tiny_lora.py"})
    return path.stat().st_size


def background_colour(video: torch.Tensor) -> list[float]:
    """Per-channel median over all frames and pixels of a [3, F, H, W] video in [-1, 1], as RGB in [0, 1].

    Shapes cover a small part of each frame, so the median pixel is background.
    """
    return [round(float(c), 3) for c in (video.flatten(1).median(dim=1).values + 1) / 2]


def evaluate(lora: Path, prompts: int, steps: int, frames: int) -> dict:
    """Mean background colour of held-out prompts: base model vs the LoRA fused into both experts."""
    config = load_task_config("t2v-tiny")
    result = {}
    for name, loras in (("base", []), ("lora", check_loras([LoraSpec(lora, 1.0, BOTH)]))):
        pipe = WanT2V.from_pretrained(config, REPO_ROOT / "models" / "t2v-tiny", device="cpu")
        apply_loras(pipe, loras)
        colours = []
        for k, item in enumerate(held_out_prompts(prompts)):
            settings = GenerationSettings(prompt=item.text, seed=k, frame_num=frames, sample_steps=steps)
            colours.append(background_colour(pipe.generate(settings, progress=False).video))
        result[name] = [round(sum(c[i] for c in colours) / len(colours), 3) for i in range(3)]
    logger.info("background colour (RGB): base %s, with the LoRA %s", result["base"], result["lora"])
    return result


def _mean(values: list[float]) -> float:
    return round(sum(values) / max(len(values), 1), 5)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "models" / "loras" / "tiny_blue_background.safetensors")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=600, help="step cap (the time budget may stop it first)")
    p.add_argument("--time_budget_min", type=float, default=7.0, help="training time, after encoding")
    p.add_argument("--clips", type=int, default=96, help="train clips, encoded once")
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--crop", type=int, default=0, help="train on latent windows of this size (0: whole clips)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--eval_prompts", type=int, default=4)
    p.add_argument("--eval_frames", type=int, default=17)
    p.add_argument("--eval_steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: on a shared CPU, 2 threads ran 25x slower)"
    )
    p.add_argument("--quick", action="store_true", help="a few steps on few clips, short evaluation")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.clips, args.batch, args.frames = 2, 4, 2, 5
        args.eval_prompts, args.eval_steps, args.eval_frames = 1, 3, 5
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    start = time.monotonic()
    pipe = WanT2V.from_pretrained(load_task_config("t2v-tiny"), REPO_ROOT / "models" / "t2v-tiny", device="cpu")
    log = {"args": {k: str(v) for k, v in vars(args).items()}, "background": BACKGROUND, "target": BLUE}
    log["train"] = train(pipe, args)
    log["train"]["seconds"] = round(time.monotonic() - start, 1)
    log["bytes"] = save_lora(pipe.experts[HIGH], args.out)
    log["eval"] = evaluate(args.out, args.eval_prompts, args.eval_steps, args.eval_frames)
    args.out.with_suffix(".json").write_text(json.dumps(log, indent=1), encoding="utf-8")
    logger.info("saved %s (%d bytes) in %.0f s", args.out, log["bytes"], time.monotonic() - start)


if __name__ == "__main__":
    main()
