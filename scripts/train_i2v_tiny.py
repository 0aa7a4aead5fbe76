"""Grow the shipped ``t2v-tiny`` into ``i2v-tiny`` (image-to-video) and fine-tune it on the tiny world.

1. grow: each expert's patch embedding takes 36 input channels instead of 16 (latents + 4 mask + 16
   image latent, the I2V-A14B layout); the new channels start at zero, so the grown model is exactly
   ``t2v-tiny`` until training moves them;
2. data: train-split clips of the tiny world, encoded by t2v-tiny's VAE, each with its first frame as
   the condition, built by ``wan.tasks`` exactly as inference builds it;
3. fine-tune both experts with rectified flow (each in its own sigma range, as ``scripts/train_tiny.py``),
   the caption dropped to the empty prompt with probability ``caption_dropout``;
4. save as a diffusers ``WanImageToVideoPipeline`` folder (fp16 experts) and measure on held-out
   prompts (first frames rendered from held-out scenes): PSNR of the decoded first frame against the
   image, adherence, and half-frame generation's PSNR against the full-frame baseline.

The text encoder, tokenizer and VAE are t2v-tiny's, unchanged. Shipped weights came from

    python3 scripts/train_i2v_tiny.py --device cuda --time_budget_min 5.5

and ``--quick`` runs every stage for a few steps (CPU smoke test):

    python3 scripts/train_i2v_tiny.py --quick --device cpu --out_dir /tmp/i2v_quick
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanTransformer3DModel
from transformers import AutoTokenizer, UMT5EncoderModel

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "scripts"))

from train_tiny import autocast, boundary_uniform, lr_factor, round_to_fp16, sigma_from_uniform  # noqa: E402

from evaluation.adherence import check  # noqa: E402
from evaluation.metrics import psnr  # noqa: E402
from evaluation.tiny_world import (  # noqa: E402
    I2V_TINY_SEED,
    TRAIN_FRAME_COUNTS,
    first_frames,
    held_out_scenes,
    render_scenes,
    sample_scene,
)
from wan.checkpoints import WanComponents  # noqa: E402
from wan.config import TaskConfig, load_task_config  # noqa: E402
from wan.settings import GenerationSettings  # noqa: E402
from wan.solvers import make_scheduler  # noqa: E402
from wan.tasks import ImageChannelConditioning, prepare_conditioning  # noqa: E402
from wan.text2video import WanT2V, encode_prompts  # noqa: E402
from wan.video import to_uint8_frames  # noqa: E402

logger = logging.getLogger("train_i2v_tiny")

CONFIG = load_task_config("i2v-tiny")
MASK_CHANNELS = 4


@dataclass(frozen=True)
class Recipe:
    height: int = 128
    width: int = 128
    num_clips: int = 4096
    encode_batch: int = 64
    steps: int = 20000
    batch_size: int = 128
    lr: float = 4e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    caption_dropout: float = 0.1
    ema_decay: float = 0.995
    log_every: int = 100
    eval_prompts: int = 16
    eval_frames: int = CONFIG.frame_num
    eval_steps: int = CONFIG.sample_steps
    reserve_min: float = 1.2  # kept for saving and evaluation


QUICK = Recipe(
    num_clips=4,
    encode_batch=2,
    steps=3,
    batch_size=2,
    log_every=1,
    eval_prompts=1,
    eval_frames=9,
    eval_steps=4,
    warmup_steps=1,
)


def grow(expert: WanTransformer3DModel, extra: int) -> WanTransformer3DModel:
    """``expert`` with ``extra`` more input channels, their patch-embedding weights zero (same outputs)."""
    config = {k: v for k, v in expert.config.items() if not k.startswith("_")}
    config["in_channels"] = expert.config.in_channels + extra
    grown = WanTransformer3DModel.from_config(config)
    state = expert.state_dict()
    weight = state["patch_embedding.weight"]
    state["patch_embedding.weight"] = torch.cat(
        [weight, weight.new_zeros(weight.shape[0], extra, *weight.shape[2:])], 1
    )
    grown.load_state_dict(state)
    return grown


@torch.no_grad()
def build_dataset(vae, recipe: Recipe, device: torch.device, seed: int) -> dict[int, dict]:
    """Per latent-frame count: normalised latents x0, the conditioning channels and caption texts."""
    rng = random.Random(seed)
    data: dict[int, dict] = {}
    mean = torch.tensor(vae.config.latents_mean, device=device).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std, device=device).view(1, -1, 1, 1, 1)
    batches = max(1, recipe.num_clips // recipe.encode_batch)
    for b in range(batches):
        frames = TRAIN_FRAME_COUNTS[b % len(TRAIN_FRAME_COUNTS)]
        scenes = [sample_scene(rng, "train") for _ in range(recipe.encode_batch)]
        clips = render_scenes(scenes, frames, recipe.height, recipe.width, device)
        with autocast(device):
            z = vae.encode(clips).latent_dist.mode().float()
        cond = ImageChannelConditioning.build(vae, clips[:, :, 0], frames=frames, device=device, dtype=torch.float32)
        entry = data.setdefault(z.shape[2], {"x0": [], "cond": [], "text": []})
        entry["x0"].append((z - mean) * inv_std)
        entry["cond"].append(cond.full)
        entry["text"] += [s.text for s in scenes]
    return {t: {"x0": torch.cat(v["x0"]), "cond": torch.cat(v["cond"]), "text": v["text"]} for t, v in data.items()}


def train(experts: list[WanTransformer3DModel], data, embed, recipe: Recipe, device, deadline: float, seed: int):
    """Rectified flow on both experts (high: sigma above the boundary, low: below); returns EMA copies and a log."""
    generator = torch.Generator(device=device).manual_seed(seed)
    rng = random.Random(seed)
    u_boundary = boundary_uniform()
    ranges = ((u_boundary, 1.0), (0.0, u_boundary))
    models = [e.to(device).train() for e in experts]
    emas = [copy.deepcopy(m).eval().requires_grad_(False) for m in models]
    optimizers = [
        torch.optim.AdamW(m.parameters(), lr=recipe.lr, betas=(0.9, 0.99), weight_decay=recipe.weight_decay)
        for m in models
    ]
    lengths = sorted(data)
    weights = [data[t]["x0"].shape[0] for t in lengths]
    log, sums, start, step = [], [0.0, 0.0], time.monotonic(), 0
    while step < recipe.steps and (step == 0 or time.monotonic() < deadline):
        progress = max(step / recipe.steps, (time.monotonic() - start) / max(deadline - start, 1e-6))
        lr = recipe.lr * lr_factor(step, progress, recipe.warmup_steps)
        decay = min(recipe.ema_decay, (1 + step) / (10 + step))
        t = rng.choices(lengths, weights)[0]
        index = torch.randint(data[t]["x0"].shape[0], (recipe.batch_size,), generator=generator, device=device)
        x0, cond = data[t]["x0"][index], data[t]["cond"][index]
        texts = [data[t]["text"][i] for i in index.tolist()]
        texts = ["" if rng.random() < recipe.caption_dropout else text for text in texts]
        context = embed(texts)
        for k, (model, ema, optimizer, (low, high)) in enumerate(zip(models, emas, optimizers, ranges, strict=True)):
            u = low + (high - low) * torch.rand(recipe.batch_size, generator=generator, device=device)
            sigma = sigma_from_uniform(u)
            noise = torch.randn(x0.shape, generator=generator, device=device)
            s = sigma.view(-1, 1, 1, 1, 1)
            noisy = torch.cat([(1 - s) * x0 + s * noise, cond], dim=1)
            with autocast(device):
                pred = model(
                    hidden_states=noisy, timestep=sigma * 1000, encoder_hidden_states=context, return_dict=False
                )[0]
            loss = F.mse_loss(pred.float(), noise - x0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            with torch.no_grad():
                torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
            sums[k] += loss.item()
        step += 1
        if step % recipe.log_every == 0:
            log.append(
                {
                    "step": step,
                    "time_s": round(time.monotonic() - start, 1),
                    "high": sums[0] / recipe.log_every,
                    "low": sums[1] / recipe.log_every,
                    "lr": lr,
                }
            )
            logger.info("step %d: loss high %.4f low %.4f", step, log[-1]["high"], log[-1]["low"])
            sums = [0.0, 0.0]
    seconds = time.monotonic() - start
    logger.info("trained %d steps in %.1f s", step, seconds)
    return emas, {"steps": step, "seconds": round(seconds, 1), "batch_size": recipe.batch_size, "losses": log}


def engine_of(pipe: WanImageToVideoPipeline, config: TaskConfig, device) -> WanT2V:
    """The project's pipeline on the diffusers pipeline's own modules (nothing copied), so evaluation runs the
    engine's loop: its step plan, guidance, half-frame transitions and ``wan.tasks`` conditioning."""
    components = WanComponents(
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        vae=pipe.vae,
        high_noise_model=pipe.transformer,
        low_noise_model=pipe.transformer_2,
        layout="diffusers",
    )
    return WanT2V(config, components, device=device)


@torch.no_grad()
def sample(
    pipe, image: torch.Tensor, prompt: str, *, frames: int, steps: int, seed: int, half_frame: str | None, device
) -> torch.Tensor:
    """One image-to-video run with the task's settings on an image given as a tensor [1, 3, H, W] in [-1, 1]
    (a rendered first frame, never a file). Returns the video [3, F, H, W] in [-1, 1]."""
    height, width = image.shape[-2:]
    size = f"{width}*{height}"
    engine = engine_of(pipe, replace(CONFIG, sizes=(size,), default_size=size), device)
    settings = GenerationSettings(
        prompt=prompt,
        seed=seed,
        size=size,
        frame_num=frames,
        sample_steps=steps,
        half_frame=half_frame is not None,
        half_frame_steps=half_frame,
    )
    plan = engine.plan(settings)
    conditioning = prepare_conditioning(
        "i2v", pipe.vae, image, frames=frames, height=height, width=width, device=device
    )
    context = engine.encode_text([plan.settings.prompt, plan.settings.negative_prompt])
    result = engine.sample(plan, context[:1], context[1:], conditioning=conditioning, progress=False)
    return engine.decode(result.latents)


@torch.no_grad()
def evaluate(pipe, recipe: Recipe, device, seed: int, half_frame: str = "0:") -> dict:
    """Held-out scenes (each names a combination never trained on): their first frame is the image, their
    caption the prompt. Baseline and half-frame runs share the seed."""
    rows = []
    for i, scene in enumerate(held_out_scenes(recipe.eval_prompts, seed)):
        image = first_frames([scene], recipe.height, recipe.width, device)
        runs = {
            name: sample(
                pipe,
                image,
                scene.text,
                frames=recipe.eval_frames,
                steps=recipe.eval_steps,
                seed=seed + i,
                half_frame=window,
                device=device,
            ).cpu()
            for name, window in (("base", None), ("half", half_frame))
        }
        image_u8 = to_uint8_frames(image.cpu()[0].unsqueeze(1))
        base_u8, half_u8 = to_uint8_frames(runs["base"]), to_uint8_frames(runs["half"])
        rows.append(
            {
                "prompt": scene.text,
                "first_frame_psnr": psnr(base_u8[:1], image_u8),
                "half_first_frame_psnr": psnr(half_u8[:1], image_u8),
                "half_vs_base_psnr": psnr(half_u8, base_u8),
                "adherence": bool(check(runs["base"], scene.text).matched),
                "half_adherence": bool(check(runs["half"], scene.text).matched),
            }
        )
        logger.info("%s", rows[-1])
    summary = {k: sum(float(r[k]) for r in rows) / len(rows) for k in rows[0] if k != "prompt"}
    return {
        "frames": recipe.eval_frames,
        "steps": recipe.eval_steps,
        "half_frame_steps": half_frame,
        "mean": summary,
        "videos": rows,
    }


def make_pipeline(tokenizer, text_encoder, vae, high, low) -> WanImageToVideoPipeline:
    return WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=make_scheduler(CONFIG.sample_solver, CONFIG.sample_shift),
        transformer=high,
        transformer_2=low,
        boundary_ratio=CONFIG.boundary,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from_dir", type=Path, default=REPO_ROOT / "models" / "t2v-tiny")
    parser.add_argument("--out_dir", type=Path, default=REPO_ROOT / "models" / "i2v-tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=I2V_TINY_SEED)
    parser.add_argument("--time_budget_min", type=float, default=6.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a Recipe field")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    start = time.monotonic()
    recipe = QUICK if args.quick else Recipe()
    for item in args.set:
        name, value = item.split("=", 1)
        recipe = replace(recipe, **{name: type(getattr(recipe, name))(value)})
    device = torch.device(args.device)
    deadline = start + 60 * (args.time_budget_min - recipe.reserve_min)

    tokenizer = AutoTokenizer.from_pretrained(args.from_dir / "tokenizer")
    text_encoder = UMT5EncoderModel.from_pretrained(args.from_dir / "text_encoder").to(device).eval()
    vae = AutoencoderKLWan.from_pretrained(args.from_dir / "vae", torch_dtype=torch.float32).to(device).eval()
    experts = [
        grow(
            WanTransformer3DModel.from_pretrained(args.from_dir, subfolder=sub, torch_dtype=torch.float32),
            MASK_CHANNELS + vae.config.z_dim,
        )
        for sub in ("transformer", "transformer_2")
    ]
    data = build_dataset(vae, recipe, device, args.seed)
    logger.info("dataset: %s clips in %.1f s", {t: d["x0"].shape[0] for t, d in data.items()}, time.monotonic() - start)
    cache: dict[str, torch.Tensor] = {}

    def embed(texts: list[str]) -> torch.Tensor:
        missing = sorted({t for t in texts if t not in cache})
        if missing:
            with torch.no_grad():
                for text, row in zip(
                    missing, encode_prompts(tokenizer, text_encoder, missing, CONFIG.text_len), strict=True
                ):
                    cache[text] = row
        return torch.stack([cache[t] for t in texts]).to(device)

    (high, low), train_log = train(experts, data, embed, recipe, device, deadline, args.seed)
    for model in (high, low):
        round_to_fp16(model)
    pipe = make_pipeline(tokenizer, text_encoder, vae, high, low)
    staging = args.out_dir.with_name(args.out_dir.name + ".partial")
    shipped = make_pipeline(
        tokenizer,
        copy.deepcopy(text_encoder).cpu(),
        copy.deepcopy(vae).cpu().half(),
        copy.deepcopy(high).cpu().half(),
        copy.deepcopy(low).cpu().half(),
    )
    shipped.save_pretrained(staging)
    evaluation = evaluate(pipe, recipe, device, args.seed)
    log = {
        "recipe": asdict(recipe),
        "from": str(args.from_dir.relative_to(REPO_ROOT) if args.from_dir.is_relative_to(REPO_ROOT) else args.from_dir),
        "device": str(device),
        "train": train_log,
        "evaluation": evaluation,
        "seconds": round(time.monotonic() - start, 1),
    }
    (staging / "train_log.json").write_text(json.dumps(log, indent=1), encoding="utf-8")
    if args.out_dir.exists():
        import shutil

        shutil.rmtree(args.out_dir)
    staging.rename(args.out_dir)
    logger.info("saved %s; evaluation %s", args.out_dir, evaluation["mean"])
    print(json.dumps(evaluation["mean"], indent=1))


if __name__ == "__main__":
    main()
