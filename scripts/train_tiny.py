"""Train the shipped ``t2v-tiny`` model on the synthetic world of ``evaluation.tiny_world`` and save it.

Stages (docs/TINY_MODEL.md has the why of each choice):

1. tokenizer: a Unigram tokenizer whose pieces are the world's words (plus characters as fallback);
2. text encoder: a small ``UMT5EncoderModel``, random init, frozen;
3. VAE: a small ``AutoencoderKLWan`` trained as an autoencoder on rendered clips, weights rounded to
   fp16, then held-out reconstruction PSNR;
4. latents: a large set of train-split clips (17, 25, 33 frames) encoded once; per-channel
   ``latents_mean``/``latents_std`` go into the VAE config;
5. experts: two ``WanTransformer3DModel`` trained with rectified flow (Wan convention) on the latents,
   the high-noise one on t >= 875 and the low-noise one below, in one loop with two optimizers;
6. save as a diffusers ``WanPipeline`` folder (fp16 weights), then sample held-out and train prompts
   with that pipeline and score them with ``evaluation.adherence``; everything goes to ``train_log.json``.

Every stage stops on time or on a step cap, whichever comes first, inside ``--time_budget_min``
counted from process start, so a GPU run always finishes, saving included. ``--stage`` splits the
run into calls of under 10 minutes; the shipped weights came from these three (21 minutes on one
H100; docs/TINY_MODEL.md):

    python3 scripts/train_tiny.py --stage vae --out_dir runs/vae --time_budget_min 9.0
    python3 scripts/train_tiny.py --stage experts --vae_from runs/vae --out_dir runs/experts --time_budget_min 9.3
    python3 scripts/train_tiny.py --stage experts --vae_from runs/experts --experts_from runs/experts \
        --set lr=4e-4 --set warmup_steps=50 --set num_clips=6000 --time_budget_min 4.5   # -> models/t2v-tiny

``--quick`` runs every stage for a few steps on small clips (a CPU smoke test of the whole script):

    python3 scripts/train_tiny.py --quick --device cpu --out_dir /tmp/tiny_quick
"""

from __future__ import annotations

import time

_PROCESS_START = time.monotonic()  # before the heavy imports: the budget counts start-up too

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import AbstractContextManager, contextmanager, nullcontext  # noqa: E402
from dataclasses import asdict, dataclass, fields, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import diffusers  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel  # noqa: E402
from diffusers.models.autoencoders.autoencoder_kl_wan import (  # noqa: E402
    WanAttentionBlock,
    WanResample,
    WanResidualBlock,
)
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors  # noqa: E402
from torch import nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from evaluation.adherence import check  # noqa: E402
from evaluation.tiny_world import (  # noqa: E402
    TRAIN_FRAME_COUNTS,
    Scene,
    all_captions,
    held_out_prompts,
    render_scenes,
    sample_scene,
)
from wan.text2video import encode_prompts  # noqa: E402

logger = logging.getLogger("train_tiny")

TASK_CONFIG = json.loads((REPO_ROOT / "configs" / "t2v-tiny.json").read_text(encoding="utf-8"))
SHIFT = float(TASK_CONFIG["sample_shift"])
BOUNDARY = float(TASK_CONFIG["boundary"])
NUM_TRAIN_TIMESTEPS = int(TASK_CONFIG["num_train_timesteps"])
MAX_FILE_BYTES = 15 * 2**20


@dataclass(frozen=True)
class Recipe:
    """Sizes, step caps and hyper-parameters; ``QUICK`` shrinks the steps and clips, not the models."""

    height: int = 128
    width: int = 128
    text_len: int = int(TASK_CONFIG["text_len"])
    # text encoder (random init, frozen)
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_ff: int = 256
    # VAE
    vae_base_dim: int = 16
    vae_steps: int = 8000
    vae_batch: int = 64
    vae_frames: int = 9  # first frame + two 4-frame chunks: every causal-cache case of a long clip
    vae_crop: int = 64  # train on random crops (the VAE is convolutional): 4x cheaper steps, 4x more of them
    vae_lr: float = 1.5e-3
    vae_warmup_steps: int = 200
    kl_weight: float = 1e-6
    vae_init: str = "he"  # "he" (see init_vae_weights) or "default" (PyTorch's)
    vae_l1_weight: float = 0.0  # loss = MSE + this x L1 (+ KL); L1 holds the VAE at the background (train_vae)
    vae_eval_clips: int = 16
    # latents
    num_clips: int = 12000
    encode_batch: int = 64
    # experts
    dit_dim: int = 128
    dit_heads: int = 4
    dit_layers: int = 6
    dit_freq_dim: int = 256
    expert_steps: int = 30000
    batch_size: int = 256
    lr: float = 8e-4
    weight_decay: float = 0.01
    warmup_steps: int = 200
    caption_dropout: float = 0.1
    ema_decay: float = 0.998
    # evaluation with the saved pipeline; a smaller probe of the EMA weights during training
    eval_heldout_prompts: int = 64
    eval_train_prompts: int = 8
    probe_every: int = 1000
    probe_prompts: int = 16
    eval_frames: int = int(TASK_CONFIG["frame_num"])
    eval_steps: int = int(TASK_CONFIG["sample_steps"])
    log_every: int = 100
    # wall-clock plan, as fractions of the budget measured from process start (--stage all; a
    # single stage gets the whole budget, encoding the same share as in all)
    vae_until: float = 0.42
    encode_until: float = 0.48
    reserve_min: float = 0.6  # kept after the last training stage for rounding, saving and evaluation


QUICK = Recipe(
    height=64,
    width=64,
    vae_steps=2,
    vae_batch=1,
    vae_eval_clips=1,
    num_clips=3,
    encode_batch=1,
    expert_steps=3,
    batch_size=2,
    warmup_steps=1,
    vae_warmup_steps=1,
    eval_heldout_prompts=1,
    eval_train_prompts=1,
    probe_every=2,
    probe_prompts=1,
    eval_frames=17,
    eval_steps=2,
    log_every=1,
)


class Clock:
    """Seconds since process start, and the deadline of each training stage in those seconds."""

    def __init__(self, budget_min: float, recipe: Recipe, stage: str):
        self.budget = budget_min * 60.0
        end = self.budget - recipe.reserve_min * 60.0
        if stage == "all":
            self.vae_deadline, self.encode_deadline = self.budget * recipe.vae_until, self.budget * recipe.encode_until
        elif stage == "vae":
            self.vae_deadline, self.encode_deadline = end, end
        else:  # experts: the VAE comes from --vae_from; the clip cap ends encoding well before this deadline
            self.vae_deadline, self.encode_deadline = 0.0, self.budget * recipe.encode_until
        self.expert_deadline = end

    @staticmethod
    def now() -> float:
        return time.monotonic() - _PROCESS_START


def autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA (fp32 master weights); plain fp32 elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def lr_factor(step: int, progress: float, warmup: int) -> float:
    """Linear warm-up, then cosine from 1 to 0.1 over ``progress`` (0..1, by steps or by time)."""
    warm = min(1.0, (step + 1) / max(warmup, 1))
    return warm * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


def round_to_fp16(module: torch.nn.Module) -> None:
    """Round weights to fp16 precision in place (dtype stays fp32): evaluate what gets shipped."""
    with torch.no_grad():
        for tensor in (*module.parameters(), *module.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())


# ----------------------------------------------------------------------------------------- text
def build_tokenizer(captions: list[str]) -> PreTrainedTokenizerFast:
    """T5-style Unigram tokenizer with one piece per caption word and single characters as fallback.

    A Unigram tokenizer trained on this corpus (as the tests' ``tiny_tokenizer`` does) learns only ~40
    near-character pieces from it (a two-shape caption becomes ~46 tokens and text_len 32 would cut off its
    motion), so the pieces are set explicitly: every template caption is at most 10 tokens, any other text still
    tokenizes. Special ids as T5: <pad> 0, </s> 1 (appended), <unk> 2.
    """
    words = sorted({w for c in captions for w in c.lower().split()})
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789") | {ch for w in words for ch in w})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(f"\u2581{w}", -2.0) for w in words] + [("\u2581", -8.0)] + [(ch, -10.0) for ch in chars]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", padding_side="right"
    )


def build_text_encoder(vocab_size: int, recipe: Recipe, seed: int) -> UMT5EncoderModel:
    torch.manual_seed(seed)
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=recipe.text_dim,
        d_kv=recipe.text_dim // recipe.text_heads,
        d_ff=recipe.text_ff,
        num_layers=recipe.text_layers,
        num_heads=recipe.text_heads,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return UMT5EncoderModel(config).eval().requires_grad_(False)


@torch.no_grad()
# ----------------------------------------------------------------------------------------- VAE
def render_batch(scenes: list[Scene], frames: int, recipe: Recipe, device: torch.device) -> torch.Tensor:
    return render_scenes(scenes, frames, recipe.height, recipe.width, device)


def random_crops(clips: torch.Tensor, size: int, rng: random.Random) -> torch.Tensor:
    """One random ``size`` x ``size`` window per clip [B, 3, F, H, W] (the whole clip if it is smaller)."""
    height, width = clips.shape[-2:]
    if size >= min(height, width):
        return clips
    crops = []
    for clip in clips:
        top, left = rng.randrange(height - size + 1), rng.randrange(width - size + 1)
        crops.append(clip[..., top : top + size, left : left + size])
    return torch.stack(crops)


def build_vae(recipe: Recipe, seed: int) -> AutoencoderKLWan:
    """Wan2.1 VAE layout at toy width (default dim_mult, 2 res blocks: the official converter's keys)."""
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=recipe.vae_base_dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2)
    if recipe.vae_init == "he":
        init_vae_weights(vae)
    elif recipe.vae_init != "default":
        raise ValueError(f"vae_init must be 'default' or 'he', got {recipe.vae_init!r}")
    return vae


@torch.no_grad()
def init_vae_weights(vae: AutoencoderKLWan) -> None:
    """Start as a shallow, frame-copying autoencoder, so reconstruction starts improving at once.

    With PyTorch's default init the deep Wan VAE sat at the background-only solution for hundreds
    of steps in CPU trials (shapes cover ~3 % of the pixels). Here: He-normal convolutions, zero
    biases; residual and attention branches zeroed (each block starts as its shortcut); temporal
    down/up-sampling convolutions start as "take the latest frame"; a 10x smaller output head.
    """
    for module in vae.modules():
        if isinstance(module, nn.Conv2d | nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for module in vae.modules():
        if isinstance(module, WanResidualBlock):
            nn.init.zeros_(module.conv2.weight)
        elif isinstance(module, WanAttentionBlock):
            nn.init.zeros_(module.proj.weight)
        elif isinstance(module, WanResample) and hasattr(module, "time_conv"):
            weight = module.time_conv.weight  # [k * C, C, 3, 1, 1]: k output frames per input window
            weight.zero_()
            channels = weight.shape[1]
            for k in range(weight.shape[0] // channels):
                weight[k * channels : (k + 1) * channels, :, -1, 0, 0] = torch.eye(channels)
    vae.decoder.conv_out.weight.mul_(0.1)


def train_vae(vae: AutoencoderKLWan, recipe: Recipe, device: torch.device, clock: Clock, seed: int) -> dict:
    """Autoencoder training (MSE + ``vae_l1_weight`` L1 + small KL) on freshly rendered train-split clips.

    L1's per-pixel optimum is the median, which for shapes on ~3 % of the pixels is the background:
    in CPU trials L1 + MSE kept the VAE at the background-only solution where MSE alone did not.
    """
    rng = random.Random(seed)
    vae.to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, betas=(0.9, 0.99), weight_decay=0.0)
    start, log, window = clock.now(), [], []
    budget = max(clock.vae_deadline - start, 1e-6)
    bar = tqdm(total=recipe.vae_steps, desc="vae", unit="step", dynamic_ncols=True)
    step = 0
    while step < recipe.vae_steps and (step == 0 or clock.now() < clock.vae_deadline):
        progress = max(step / recipe.vae_steps, (clock.now() - start) / budget)
        for group in optimizer.param_groups:
            group["lr"] = recipe.vae_lr * lr_factor(step, progress, recipe.vae_warmup_steps)
        x = random_crops(
            render_batch(
                [sample_scene(rng, "train") for _ in range(recipe.vae_batch)], recipe.vae_frames, recipe, device
            ),
            recipe.vae_crop,
            rng,
        )
        with autocast(device):
            posterior = vae.encode(x).latent_dist
            # Decode the posterior mean: sampled latents start as unit-variance noise that AdamW's
            # bounded steps take thousands of steps to shrink, and the decoder learns nothing meanwhile.
            recon = vae.decode(posterior.mode()).sample
        recon = recon.float()
        l1, mse = (recon - x).abs().mean(), F.mse_loss(recon, x)
        kl = 0.5 * (posterior.mean.float().pow(2) + posterior.var.float() - 1 - posterior.logvar.float()).mean()
        loss = mse + recipe.vae_l1_weight * l1 + recipe.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        window.append(torch.stack([loss.detach(), l1.detach(), mse.detach(), kl.detach()]))
        step += 1
        bar.update()
        if step % recipe.log_every == 0:
            loss_v, l1_v, mse_v, kl_v = torch.stack(window).mean(0).tolist()
            window.clear()
            psnr = 10 * math.log10(4.0 / max(mse_v, 1e-12))  # [-1, 1] pixels: peak-to-peak 2
            log.append({"step": step, "time_s": round(clock.now() - start, 2), "loss": loss_v, "l1": l1_v, "kl": kl_v})
            log[-1]["train_psnr_db"] = round(psnr, 2)
            bar.set_postfix(loss=f"{loss_v:.4f}", psnr=f"{psnr:.1f}")
    bar.close()
    vae.eval().requires_grad_(False)
    seconds = clock.now() - start
    logger.info("VAE: %d steps in %.1f s (%.0f ms/step)", step, seconds, 1000 * seconds / step)
    return {"steps": step, "seconds": round(seconds, 1), "ms_per_step": round(1000 * seconds / step, 1), "losses": log}


@torch.no_grad()
def evaluate_vae(vae: AutoencoderKLWan, recipe: Recipe, device: torch.device, seed: int) -> dict:
    """PSNR of held-out (test-split) clips at the task's frame count, and the detector on them."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng, "test") for _ in range(recipe.vae_eval_clips)]
    psnrs, detector_ok, detector_on_clean = [], 0, 0
    for i in range(0, len(scenes), 8):
        chunk = scenes[i : i + 8]
        x = render_batch(chunk, recipe.eval_frames, recipe, device)
        with autocast(device):
            recon = vae.decode(vae.encode(x).latent_dist.mode()).sample
        recon = recon.float().clamp(-1, 1)
        for scene, clean, out in zip(chunk, x, recon, strict=True):
            mse = float(((out - clean) / 2).pow(2).mean())
            psnrs.append(10 * math.log10(1.0 / max(mse, 1e-12)))
            detector_ok += check(out.cpu(), scene.text).matched
            detector_on_clean += check(clean.cpu(), scene.text).matched
    result = {
        "clips": len(scenes),
        "frames": recipe.eval_frames,
        "psnr_db_mean": round(sum(psnrs) / len(psnrs), 2),
        "psnr_db_min": round(min(psnrs), 2),
        "detector_on_reconstructions": detector_ok / len(scenes),
        "detector_on_clean_clips": detector_on_clean / len(scenes),
    }
    logger.info("VAE held-out reconstruction: %s", result)
    return result


# ----------------------------------------------------------------------------------------- latents
@torch.no_grad()
def encode_dataset(
    vae: AutoencoderKLWan, caption_index: dict[str, int], recipe: Recipe, device: torch.device, clock: Clock, seed: int
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], dict]:
    """Encode train-split clips (posterior means), round-robin over the clip lengths, until cap or time.

    Returns latents per latent-frame count [N, 16, T, h, w] (raw, not yet normalised), caption
    indices per count [N], and the stage log.
    """
    rng = random.Random(seed)
    start = clock.now()
    latents: dict[int, list[torch.Tensor]] = {}
    captions: dict[int, list[torch.Tensor]] = {}
    per_length = max(1, recipe.num_clips // len(TRAIN_FRAME_COUNTS))
    batches = math.ceil(per_length / recipe.encode_batch) * len(TRAIN_FRAME_COUNTS)
    done = 0
    for b in tqdm(range(batches), desc="encode", unit="batch", dynamic_ncols=True):
        if b >= len(TRAIN_FRAME_COUNTS) and clock.now() > clock.encode_deadline:
            logger.info("encoding stopped on time after %d batches", b)
            break
        frames = TRAIN_FRAME_COUNTS[b % len(TRAIN_FRAME_COUNTS)]
        scenes = [sample_scene(rng, "train") for _ in range(recipe.encode_batch)]
        with autocast(device):
            mu = vae.encode(render_batch(scenes, frames, recipe, device)).latent_dist.mode()
        t = mu.shape[2]
        latents.setdefault(t, []).append(mu.float())
        captions.setdefault(t, []).append(torch.tensor([caption_index[s.text] for s in scenes], device=device))
        done += len(scenes)
    out_latents = {t: torch.cat(v) for t, v in latents.items()}
    out_captions = {t: torch.cat(v) for t, v in captions.items()}
    seconds = clock.now() - start
    counts = {str(t): int(v.shape[0]) for t, v in out_latents.items()}
    logger.info("encoded %d clips in %.1f s: %s (latent frames: clips)", done, seconds, counts)
    return out_latents, out_captions, {"clips": done, "clips_per_latent_frames": counts, "seconds": round(seconds, 1)}


def latent_stats(latents: dict[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over every training latent (all clips, frames and positions)."""
    flat = torch.cat([v.transpose(0, 1).reshape(v.shape[1], -1) for v in latents.values()], dim=1)
    return flat.mean(dim=1), flat.std(dim=1).clamp_min(1e-4)


# ----------------------------------------------------------------------------------------- experts
def build_expert(recipe: Recipe, seed: int) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=recipe.dit_heads,
        attention_head_dim=recipe.dit_dim // recipe.dit_heads,
        in_channels=16,
        out_channels=16,
        text_dim=recipe.text_dim,
        freq_dim=recipe.dit_freq_dim,
        ffn_dim=4 * recipe.dit_dim,
        num_layers=recipe.dit_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
    )


def sigma_from_uniform(u: torch.Tensor) -> torch.Tensor:
    """The sampler's shift transform s = shift u / (1 + (shift - 1) u): training sigmas match sampling."""
    return SHIFT * u / (1 + (SHIFT - 1) * u)


def boundary_uniform() -> float:
    """The u whose shifted sigma is the expert boundary (0.368 for shift 12, boundary 0.875)."""
    return BOUNDARY / (SHIFT - (SHIFT - 1) * BOUNDARY)


@dataclass
class Expert:
    name: str
    model: WanTransformer3DModel
    ema: WanTransformer3DModel
    optimizer: torch.optim.Optimizer
    u_range: tuple[float, float]
    log: list[dict]


def train_experts(
    latents: dict[int, torch.Tensor],
    captions: dict[int, torch.Tensor],
    embeddings: torch.Tensor,
    recipe: Recipe,
    device: torch.device,
    clock: Clock,
    seed: int,
    probe: Callable[[WanTransformer3DModel, WanTransformer3DModel], dict],
    init_from: Path | None = None,
) -> tuple[WanTransformer3DModel, WanTransformer3DModel, dict]:
    """Rectified flow, Wan convention: x_s = (1 - s) x0 + s eps, target eps - x0, timestep 1000 s.

    Both experts see the same clips each step, each with its own noise and its own sigma range
    (high: s >= boundary, low: s < boundary, both through the shift transform); the caption is
    replaced by the empty prompt (the negative prompt) with probability ``caption_dropout``.
    Every ``probe_every`` steps ``probe`` scores the EMA weights (adherence over training, to see
    whether more steps would pay). ``init_from``: a saved model folder whose experts to continue
    from (fresh optimizers, a new warm-up and cosine). Returns the EMA weights.
    """
    rng = random.Random(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    u_boundary = boundary_uniform()
    experts = []
    for k, (name, u_range) in enumerate((("high", (u_boundary, 1.0)), ("low", (0.0, u_boundary)))):
        model = build_expert(recipe, seed + k)
        if init_from is not None:
            subfolder = "transformer" if name == "high" else "transformer_2"
            saved = WanTransformer3DModel.from_pretrained(init_from, subfolder=subfolder, torch_dtype=torch.float32)
            model.load_state_dict(saved.state_dict())
        model = model.to(device).train()
        ema = copy.deepcopy(model).eval().requires_grad_(False)
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=recipe.lr,
            betas=(0.9, 0.99),
            weight_decay=recipe.weight_decay,
            fused=device.type == "cuda",
        )
        experts.append(Expert(name, model, ema, optimizer, u_range, []))
    params = sum(p.numel() for p in experts[0].model.parameters())
    logger.info("experts: %.2fM parameters each; u boundary %.4f", params / 1e6, u_boundary)

    lengths = sorted(latents)
    weights = [latents[t].shape[0] for t in lengths]
    start = clock.now()
    budget = max(clock.expert_deadline - start, 1e-6)
    sums = {e.name: torch.zeros((), device=device) for e in experts}
    probes, probe_seconds = [], 0.0
    bar = tqdm(total=recipe.expert_steps, desc="experts", unit="step", dynamic_ncols=True)
    step = 0
    while step < recipe.expert_steps and (step == 0 or clock.now() < clock.expert_deadline):
        progress = max(step / recipe.expert_steps, (clock.now() - start) / budget)
        lr = recipe.lr * lr_factor(step, progress, recipe.warmup_steps)
        decay = min(recipe.ema_decay, (1 + step) / (10 + step))
        t = rng.choices(lengths, weights)[0]
        index = torch.randint(weights[lengths.index(t)], (recipe.batch_size,), device=device, generator=generator)
        x0 = latents[t][index]
        caption = captions[t][index]
        dropped = torch.rand(recipe.batch_size, device=device, generator=generator) < recipe.caption_dropout
        context = embeddings[torch.where(dropped, torch.zeros_like(caption), caption)]
        for expert in experts:
            low, high = expert.u_range
            u = low + (high - low) * torch.rand(recipe.batch_size, device=device, generator=generator)
            sigma = sigma_from_uniform(u)
            noise = torch.randn(x0.shape, device=device, generator=generator)
            s = sigma.view(-1, 1, 1, 1, 1)
            noisy = (1 - s) * x0 + s * noise
            with autocast(device):
                pred = expert.model(
                    hidden_states=noisy,
                    timestep=sigma * NUM_TRAIN_TIMESTEPS,
                    encoder_hidden_states=context,
                    return_dict=False,
                )[0]
            loss = F.mse_loss(pred.float(), noise - x0)
            expert.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(expert.model.parameters(), 1.0)
            for group in expert.optimizer.param_groups:
                group["lr"] = lr
            expert.optimizer.step()
            with torch.no_grad():
                torch._foreach_lerp_(list(expert.ema.parameters()), list(expert.model.parameters()), 1 - decay)
            sums[expert.name] += loss.detach()
        step += 1
        bar.update()
        if step % recipe.log_every == 0:
            now = round(clock.now() - start, 2)
            means = {name: float(total) / recipe.log_every for name, total in sums.items()}
            for expert in experts:
                expert.log.append({"step": step, "time_s": now, "loss": means[expert.name], "lr": lr})
                sums[expert.name].zero_()
            bar.set_postfix(high=f"{means['high']:.4f}", low=f"{means['low']:.4f}")
        if step % recipe.probe_every == 0:
            probe_start = clock.now()
            probes.append({"step": step, "time_s": round(probe_start - start, 2), **probe(*(e.ema for e in experts))})
            probe_seconds += clock.now() - probe_start
    bar.close()
    seconds = clock.now() - start
    per_step = 1000 * (seconds - probe_seconds) / step
    logger.info("experts: %d steps in %.1f s (%.0f ms/step, probes %.1f s)", step, seconds, per_step, probe_seconds)
    high, low = (e.ema for e in experts)
    log = {
        "steps": step,
        "seconds": round(seconds, 1),
        "ms_per_step": round(per_step, 1),
        "probe_seconds": round(probe_seconds, 1),
        "batch_size": recipe.batch_size,
        "continued_from": None if init_from is None else str(init_from),
        "probes": probes,
        "samples_per_expert": step * recipe.batch_size,
        "parameters_per_expert": params,
        "high": experts[0].log,
        "low": experts[1].log,
    }
    return high, low, log


# ----------------------------------------------------------------------------------------- save, evaluate
def make_pipeline(tokenizer, text_encoder, vae, high, low) -> WanPipeline:
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=SHIFT,
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
    )
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=high,
        transformer_2=low,
        boundary_ratio=BOUNDARY,
    )


@contextmanager
def staged_folder(out_dir: Path) -> Iterator[Path]:
    """Yield ``<out_dir>.partial`` to write into; it replaces ``out_dir`` only if the block succeeds.

    So an interrupted or failed run leaves the previous folder (e.g. the shipped model) as it was.
    """
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    yield staging
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)


def save(out_dir: Path, tokenizer, text_encoder, vae, high, low) -> dict[str, int]:
    """Write the WanPipeline folder (VAE and experts in fp16, the tiny text encoder in fp32)."""
    with staged_folder(out_dir) as staging:
        cpu = [copy.deepcopy(m).cpu() for m in (vae, high, low)]
        half = [m.to(torch.float16) for m in cpu]
        make_pipeline(tokenizer, copy.deepcopy(text_encoder).cpu(), *half).save_pretrained(staging)
        sizes = {str(p.relative_to(staging)): p.stat().st_size for p in sorted(staging.rglob("*")) if p.is_file()}
        too_big = {name: size for name, size in sizes.items() if size >= MAX_FILE_BYTES}
        if too_big:
            raise RuntimeError(f"files over 15 MiB: {too_big}; shrink the model")
    logger.info("saved %s (%.2f MB)", out_dir, sum(sizes.values()) / 1e6)
    return sizes


@torch.no_grad()
def evaluate_adherence(
    pipe: WanPipeline, heldout_count: int, train_count: int, recipe: Recipe, device: torch.device, seed: int
) -> dict:
    """Sample held-out and train prompts with the task's sampling settings; score with evaluation.adherence.

    The held-out prompts are the first of ``held_out_prompts(64)``, the set ``scripts/compare.py``
    scores by default, so the two report adherence on the same prompts.
    """
    rng = random.Random(seed)
    heldout = [p.text for p in held_out_prompts(max(heldout_count, 64))[:heldout_count]]
    train = [sample_scene(rng, "train").text for _ in range(train_count)]
    pipe.set_progress_bar_config(disable=True)
    result = {"frames": recipe.eval_frames, "steps": recipe.eval_steps}
    for split, prompts in (("heldout", heldout), ("train", train)):
        if not prompts:
            continue
        videos = pipe(
            prompt=prompts,
            negative_prompt=TASK_CONFIG["negative_prompt"],
            height=recipe.height,
            width=recipe.width,
            num_frames=recipe.eval_frames,
            num_inference_steps=recipe.eval_steps,
            guidance_scale=TASK_CONFIG["guide_scale_high"],
            guidance_scale_2=TASK_CONFIG["guide_scale_low"],
            max_sequence_length=recipe.text_len,
            generator=torch.Generator(device=device).manual_seed(seed),
            output_type="pt",
        ).frames  # [B, F, 3, H, W] in [0, 1]
        checks = [check(v.permute(1, 0, 2, 3).float().cpu() * 2 - 1, p) for v, p in zip(videos, prompts, strict=True)]
        result[split] = {
            "adherence": sum(c.matched for c in checks) / len(checks),
            "colour_ok": sum(c.colour_ok for c in checks) / len(checks),
            "motion_ok": sum(c.motion_ok for c in checks) / len(checks),
            "videos": [
                {"prompt": c.prompt, "colours": list(c.detection.colours), "motion": c.detection.motion} for c in checks
            ],
        }
        logger.info(
            "adherence (%s prompts, %d): %.3f (colour %.3f, motion %.3f)",
            split,
            len(prompts),
            result[split]["adherence"],
            result[split]["colour_ok"],
            result[split]["motion_ok"],
        )
    return result


# ----------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", type=Path, default=REPO_ROOT / "models" / "t2v-tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=20250)
    parser.add_argument(
        "--stage",
        choices=("all", "vae", "experts"),
        default="all",
        help="all (default); vae: train and save only the VAE (OUT_DIR/vae); experts: the rest, on --vae_from's VAE",
    )
    parser.add_argument(
        "--vae_from", type=Path, default=None, help="folder written by --stage vae (with --stage experts)"
    )
    parser.add_argument(
        "--experts_from",
        type=Path,
        default=None,
        help="with --stage experts: continue training the experts of this saved model folder",
    )
    parser.add_argument(
        "--time_budget_min",
        type=float,
        default=None,
        help="wall-clock budget of this run from process start, saving included (default 7.5; quick 2.0)",
    )
    parser.add_argument("--quick", action="store_true", help="a few steps of every stage on small clips (CPU smoke)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a Recipe field, e.g. --set vae_batch=32 (repeatable)",
    )
    args = parser.parse_args(argv)
    if (args.stage == "experts") != (args.vae_from is not None):
        parser.error("--vae_from goes with --stage experts, and --stage experts needs it")
    if args.experts_from is not None and args.stage != "experts":
        parser.error("--experts_from goes with --stage experts")
    try:
        args.recipe = build_recipe(args.quick, args.overrides)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def build_recipe(quick: bool, overrides: list[str]) -> Recipe:
    """The default (or quick) recipe with ``FIELD=VALUE`` overrides, each parsed as its field's type."""
    recipe = QUICK if quick else Recipe()
    kinds = {f.name: type(getattr(recipe, f.name)) for f in fields(Recipe)}
    changes = {}
    for item in overrides:
        name, _, value = item.partition("=")
        if name not in kinds or not value:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(kinds)}")
        changes[name] = kinds[name](value)
    return replace(recipe, **changes)


def load_vae_stage(folder: Path) -> tuple[AutoencoderKLWan, dict]:
    """The VAE and its stage log from a ``--stage vae`` folder (one-line error if it is not one)."""
    try:
        vae = AutoencoderKLWan.from_pretrained(folder / "vae", torch_dtype=torch.float32)
        log = json.loads((folder / "train_log.json").read_text(encoding="utf-8"))["stages"]["vae"]
    except (OSError, KeyError, ValueError) as exc:
        print(f"error: {folder} is not a folder written by --stage vae ({exc}); run --stage vae first", file=sys.stderr)
        raise SystemExit(2) from exc
    return vae.eval().requires_grad_(False), {**log, "from": str(folder)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    recipe = args.recipe
    budget = args.time_budget_min if args.time_budget_min is not None else (2.0 if args.quick else 7.5)
    clock = Clock(budget, recipe, args.stage)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True  # fixed clip shapes: pick the fastest conv3d algorithms once
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    logger.info(
        "device %s, seed %d, stage %s, budget %.1f min, recipe %s", device_name, args.seed, args.stage, budget, recipe
    )
    train_log: dict = {
        "seed": args.seed,
        "stage": args.stage,
        "quick": args.quick,
        "device": device_name,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
        "time_budget_min": budget,
        "recipe": asdict(recipe),
        "stages": {},
        "startup_s": round(clock.now(), 1),
    }
    stages = train_log["stages"]
    log_path = args.out_dir / "train_log.json"

    # 1-2. tokenizer and frozen text encoder; the caption table row 0 is the empty (negative) prompt.
    start = clock.now()
    captions = all_captions()
    tokenizer = build_tokenizer(captions)
    text_encoder = build_text_encoder(len(tokenizer), recipe, args.seed)
    table_texts = [TASK_CONFIG["negative_prompt"], *captions]
    embeddings = encode_prompts(tokenizer, text_encoder, table_texts, recipe.text_len).to(device)
    caption_index = {text: i for i, text in enumerate(table_texts)}
    longest = max(len(tokenizer(c).input_ids) for c in captions)
    stages["text"] = {
        "vocab_size": len(tokenizer),
        "longest_caption_tokens": longest,
        "captions": len(captions),
        "text_encoder_parameters": sum(p.numel() for p in text_encoder.parameters()),
        "seconds": round(clock.now() - start, 1),
    }
    logger.info("text: %s", stages["text"])

    # 3. VAE, rounded to the fp16 that ships, then measured (or taken from a --stage vae run).
    if args.stage == "experts":
        vae, stages["vae"] = load_vae_stage(args.vae_from)
        vae.to(device)
    else:
        vae = build_vae(recipe, args.seed + 10)
        stages["vae"] = train_vae(vae, recipe, device, clock, args.seed + 11)
        round_to_fp16(vae)
        stages["vae"]["heldout"] = evaluate_vae(vae, recipe, device, args.seed + 12)
        stages["vae"]["peak_memory_gb"] = peak_memory_gb(device)
    if args.stage == "vae":
        with staged_folder(args.out_dir) as staging:
            copy.deepcopy(vae).cpu().to(torch.float16).save_pretrained(staging / "vae")
            train_log["total_s"] = round(clock.now(), 1)
            (staging / "train_log.json").write_text(json.dumps(train_log, indent=1), encoding="utf-8")
        logger.info("VAE stage done in %.1f s (budget %.0f s): %s", clock.now(), clock.budget, args.out_dir)
        return

    # 4. latents of a large clip set, normalised per channel; the stats go into the VAE config.
    latents, clip_captions, stages["latents"] = encode_dataset(
        vae, caption_index, recipe, device, clock, args.seed + 13
    )
    mean, std = latent_stats(latents)
    vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())
    latents = {t: (v - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1) for t, v in latents.items()}
    stages["latents"].update(latents_mean=mean.tolist(), latents_std=std.tolist())

    # 5. the two experts, probed on a few held-out prompts as they train.
    text_encoder.to(device)

    def probe(high: WanTransformer3DModel, low: WanTransformer3DModel) -> dict:
        pipe = make_pipeline(tokenizer, text_encoder, vae, high, low)
        result = evaluate_adherence(pipe, recipe.probe_prompts, 0, recipe, device, args.seed + 30)
        return {"adherence": result["heldout"]["adherence"]}

    high, low, stages["experts"] = train_experts(
        latents, clip_captions, embeddings, recipe, device, clock, args.seed + 20, probe, args.experts_from
    )
    stages["experts"]["peak_memory_gb"] = peak_memory_gb(device)
    del latents
    for model in (high, low):
        round_to_fp16(model)

    # 6. save first (the run's product), then evaluate the same weights through WanPipeline.
    start = clock.now()
    sizes = save(args.out_dir, tokenizer, text_encoder, vae, high, low)
    stages["save"] = {"seconds": round(clock.now() - start, 1), "files": sizes, "total_bytes": sum(sizes.values())}
    train_log["total_s"] = round(clock.now(), 1)
    log_path.write_text(json.dumps(train_log, indent=1), encoding="utf-8")

    start = clock.now()
    pipe = make_pipeline(tokenizer, text_encoder, vae, high.eval(), low.eval()).to(device)
    stages["eval"] = evaluate_adherence(
        pipe, recipe.eval_heldout_prompts, recipe.eval_train_prompts, recipe, device, args.seed + 30
    )
    stages["eval"]["seconds"] = round(clock.now() - start, 1)
    train_log["total_s"] = round(clock.now(), 1)
    log_path.write_text(json.dumps(train_log, indent=1), encoding="utf-8")
    logger.info("done in %.1f s (budget %.0f s); log: %s", clock.now(), clock.budget, log_path)


def peak_memory_gb(device: torch.device) -> float | None:
    """Peak allocated GPU memory so far (None off CUDA): the batch sizes' headroom."""
    return round(torch.cuda.max_memory_allocated(device) / 1e9, 2) if device.type == "cuda" else None


if __name__ == "__main__":
    main()
