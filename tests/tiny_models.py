"""Builders for tiny random Wan2.2 checkpoints (the released models' classes at toy sizes) used by the tests.

``tiny_parts`` is T2V-A14B-like (two experts, 16 channels, Wan2.1 VAE), ``tiny_i2v_parts`` I2V-A14B-like
(two experts taking 36 channels: noise + mask + image latent), ``tiny_ti2v_parts`` TI2V-5B-like (one dense
model, 48 channels, a Wan2.2 VAE). Each saves in both layouts: ``save_diffusers_layout``, ``save_official_layout``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
from tiny_tokenizer import train_caption_tokenizer
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

TEXT_DIM = 32
CAPTIONS = [
    "a red square moving left",
    "a blue circle moving right",
    "a green triangle moving up",
    "a yellow square moving down",
    "two shapes bouncing",
    "a cat walking on grass",
]


@dataclass
class TinyParts:
    tokenizer: PreTrainedTokenizerFast
    text_encoder: UMT5EncoderModel
    vae: AutoencoderKLWan
    high_noise_model: WanTransformer3DModel
    low_noise_model: WanTransformer3DModel | None  # None: a one-model (TI2V-5B-like) checkpoint


def tiny_transformer(seed: int, in_channels: int = 16, out_channels: int = 16) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=in_channels,
        out_channels=out_channels,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=48,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=64,
    )
    # Random init leaves the output projection near zero; give it weight so outputs differ per step.
    with torch.no_grad():
        model.proj_out.weight.normal_(0, 0.2)
    return model.eval()


def tiny_parts(seed: int = 0) -> TinyParts:
    tokenizer = train_caption_tokenizer(CAPTIONS, vocab_size=64)
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=TEXT_DIM,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
        )
    ).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2).eval()
    return TinyParts(tokenizer, text_encoder, vae, tiny_transformer(seed + 2), tiny_transformer(seed + 3))


def tiny_i2v_parts(seed: int = 0) -> TinyParts:
    """I2V-A14B-like: two experts taking 16 noise + 4 mask + 16 image-latent channels, the Wan2.1 VAE (official T5)."""
    parts = tiny_parts_official(seed)
    parts.high_noise_model = tiny_transformer(seed + 2, in_channels=36)
    parts.low_noise_model = tiny_transformer(seed + 3, in_channels=36)
    return parts


def tiny_wan22_vae(seed: int) -> AutoencoderKLWan:
    """The Wan2.2 VAE at toy width: 48 latent channels, RGB patchified 2x2, 4x16x16 compression, released stats."""
    from wan.checkpoints.keymaps import WAN22_VAE_LATENTS_MEAN, WAN22_VAE_LATENTS_STD

    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=8,
        decoder_base_dim=12,
        z_dim=48,
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_temporal=4,
        scale_factor_spatial=16,
        latents_mean=list(WAN22_VAE_LATENTS_MEAN),
        latents_std=list(WAN22_VAE_LATENTS_STD),
    ).eval()


def tiny_ti2v_parts(seed: int = 0) -> TinyParts:
    """TI2V-5B-like: one dense model on 48 latent channels and a Wan2.2 VAE (official T5)."""
    parts = tiny_parts_official(seed)
    parts.vae = tiny_wan22_vae(seed + 1)
    parts.high_noise_model = tiny_transformer(seed + 2, in_channels=48, out_channels=48)
    parts.low_noise_model = None
    return parts


def _scheduler(flow_shift: float) -> UniPCMultistepScheduler:
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift)


def wan_pipeline(parts: TinyParts, boundary_ratio: float = 0.875):
    """diffusers' own ``WanPipeline`` on ``parts`` with the released A14B scheduler (UniPC, flow, shift 12)."""
    from diffusers import WanPipeline

    return WanPipeline(
        tokenizer=parts.tokenizer,
        text_encoder=parts.text_encoder,
        vae=parts.vae,
        scheduler=_scheduler(12.0),
        transformer=parts.high_noise_model,
        transformer_2=parts.low_noise_model,
        boundary_ratio=boundary_ratio,
    )


def i2v_pipeline(parts: TinyParts, boundary_ratio: float = 0.9, flow_shift: float = 5.0):
    """diffusers' ``WanImageToVideoPipeline`` on I2V parts as Wan2.2 ships it: two experts, no CLIP image encoder."""
    from diffusers import WanImageToVideoPipeline

    return WanImageToVideoPipeline(
        tokenizer=parts.tokenizer,
        text_encoder=parts.text_encoder,
        vae=parts.vae,
        scheduler=_scheduler(flow_shift),
        transformer=parts.high_noise_model,
        transformer_2=parts.low_noise_model,
        boundary_ratio=boundary_ratio,
    )


def ti2v_pipeline(parts: TinyParts, flow_shift: float = 5.0):
    """diffusers' ``WanPipeline`` on TI2V parts as TI2V-5B ships it: one model, per-token timesteps."""
    from diffusers import WanPipeline

    return WanPipeline(
        tokenizer=parts.tokenizer,
        text_encoder=parts.text_encoder,
        vae=parts.vae,
        scheduler=_scheduler(flow_shift),
        transformer=parts.high_noise_model,
        transformer_2=None,
        expand_timesteps=True,
    )


def save_diffusers_layout(parts: TinyParts, root: Path, boundary_ratio: float = 0.875) -> Path:
    """Write ``parts`` as the diffusers pipeline of their kind saves them (model_index.json and one folder a part).

    ``boundary_ratio`` is the T2V pipeline's; the I2V one is saved with the released 0.9.
    """
    if parts.low_noise_model is None:
        pipe = ti2v_pipeline(parts)
    elif parts.high_noise_model.config.in_channels != parts.high_noise_model.config.out_channels:
        pipe = i2v_pipeline(parts)
    else:
        pipe = wan_pipeline(parts, boundary_ratio)
    pipe.save_pretrained(root)
    return root


def tiny_parts_official(seed: int = 0) -> TinyParts:
    """``tiny_parts`` whose text encoder uses relative_attention_max_distance 128.

    Wan's T5 file stores no config, and its loader fixes the distance at 128 (as umT5-xxl); a tiny
    encoder must use it too for both layouts to give the same outputs.
    """
    parts = tiny_parts(seed)
    encoder = parts.text_encoder
    encoder.config.relative_attention_max_distance = 128
    encoder.encoder.config.relative_attention_max_distance = 128
    for module in encoder.modules():
        if hasattr(module, "relative_attention_max_distance"):
            module.relative_attention_max_distance = 128
    return parts


def _official_expert_config(model: WanTransformer3DModel, one_model: bool) -> dict:
    """An official ``WanModel`` config.json for ``model`` (no text_dim: the release does not record it)."""
    cfg = model.config
    if one_model:
        model_type = "ti2v"
    else:
        model_type = "t2v" if cfg.in_channels == cfg.out_channels else "i2v"
    return {
        "_class_name": "WanModel",
        "_diffusers_version": "0.33.0",
        "dim": cfg.num_attention_heads * cfg.attention_head_dim,
        "eps": cfg.eps,
        "ffn_dim": cfg.ffn_dim,
        "freq_dim": cfg.freq_dim,
        "in_dim": cfg.in_channels,
        "model_type": model_type,
        "num_heads": cfg.num_attention_heads,
        "num_layers": cfg.num_layers,
        "out_dim": cfg.out_channels,
        "text_len": 512,
    }


def _save_sharded(tensors: dict[str, torch.Tensor], folder: Path, shards: int) -> None:
    """Write ``tensors`` as diffusion_pytorch_model[-0000i-of-0000n].safetensors (+ index json when sharded)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    if shards <= 1:
        save_file(tensors, folder / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
        return
    per = -(-len(names) // shards)
    weight_map, total = {}, 0
    for i in range(shards):
        chunk = names[i * per : (i + 1) * per]
        fname = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in chunk}, folder / fname, metadata={"format": "pt"})
        for n in chunk:
            weight_map[n] = fname
            total += tensors[n].numel() * tensors[n].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def umt5_hf_to_wan(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``UMT5EncoderModel`` state dict under Wan's T5 names, as the official file stores it (the tied copy once)."""
    from wan.checkpoints.keymaps import (
        UMT5_TIED_KEY,
        umt5_hf_key_to_wan,
    )

    return {umt5_hf_key_to_wan(k): v for k, v in state_dict.items() if k != UMT5_TIED_KEY}


def save_official_layout(parts: TinyParts, root: Path, shards: int = 2, t5_dtype: torch.dtype | None = None) -> Path:
    """Write ``parts`` in the layout of the official Wan2.2 release of their kind (Wan key names).

    Two experts go to high_noise_model/ and low_noise_model/, a single model to the root (as TI2V-5B);
    the VAE is Wan2.2_VAE.pth when it has 48 latent channels, else Wan2.1_VAE.pth. ``t5_dtype`` casts
    the T5 file (the release stores bf16); None keeps the encoder's dtype so the two layouts hold
    bit-identical weights.
    """
    from wan.checkpoints import diffusers_to_wan_transformer_key, diffusers_to_wan_vae_key

    if parts.text_encoder.config.relative_attention_max_distance != 128:
        warnings.warn("the official T5 format implies relative_attention_max_distance 128", stacklevel=2)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if parts.low_noise_model is None:
        experts = [(".", parts.high_noise_model)]
    else:
        experts = [("high_noise_model", parts.high_noise_model), ("low_noise_model", parts.low_noise_model)]
    for name, model in experts:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            diffusers_to_wan_transformer_key(k): v.detach().clone().contiguous() for k, v in model.state_dict().items()
        }
        _save_sharded(tensors, folder, shards)
        config = _official_expert_config(model, one_model=len(experts) == 1)
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    vae_config = parts.vae.config
    vae = {
        diffusers_to_wan_vae_key(k, residual=vae_config.is_residual, num_res_blocks=vae_config.num_res_blocks): (
            v.detach().clone()
        )
        for k, v in parts.vae.state_dict().items()
    }
    torch.save(vae, root / ("Wan2.2_VAE.pth" if vae_config.z_dim == 48 else "Wan2.1_VAE.pth"))
    t5 = umt5_hf_to_wan({k: v.detach().clone() for k, v in parts.text_encoder.state_dict().items()})
    if t5_dtype is not None:
        t5 = {k: v.to(t5_dtype) for k, v in t5.items()}
    torch.save(t5, root / "models_t5_umt5-xxl-enc-bf16.pth")
    parts.tokenizer.save_pretrained(root / "google" / "umt5-xxl")
    return root


LAYOUTS = {"official": save_official_layout, "diffusers": save_diffusers_layout}
"""The two checkpoint layouts by name, each with its writer."""


def as_components(parts: TinyParts, layout: str = "diffusers"):
    """The parts as the pipeline takes them (``wan.checkpoints.WanComponents``), without a round trip to disk."""
    from wan.checkpoints import WanComponents

    return WanComponents(
        tokenizer=parts.tokenizer,
        text_encoder=parts.text_encoder,
        vae=parts.vae,
        high_noise_model=parts.high_noise_model,
        low_noise_model=parts.low_noise_model,
        layout=layout,
    )


LORA_LAYERS = {"attn1.to_q": "self_attn.q", "attn2.to_v": "cross_attn.v", "ffn.net.0.proj": "ffn.0"}
"""Layers the tests' LoRAs touch: diffusers name -> official Wan name (inside ``blocks.N``)."""


def random_lora(model: WanTransformer3DModel, rank: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(down [rank, in], up [out, rank]) per diffusers module name, for ``LORA_LAYERS`` of every block."""
    generator = torch.Generator().manual_seed(seed)
    pairs = {}
    for block in range(len(model.blocks)):
        for name in LORA_LAYERS:
            layer = model.get_submodule(f"blocks.{block}.{name}")
            down = torch.randn(rank, layer.in_features, generator=generator) * 0.1
            up = torch.randn(layer.out_features, rank, generator=generator) * 0.1
            pairs[f"blocks.{block}.{name}"] = (down, up)
    return pairs


def lora_tensors(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], naming: str, alpha: float) -> dict:
    """The LoRA as a file holds it: ``diffusers`` (alpha in the header, see ``lora_metadata``), ``wan``
    (lora_down/lora_up/alpha, ComfyUI and kohya) or ``wan_ab`` (lora_A/lora_B/alpha under diffusion_model.)."""
    tensors = {}
    for module, (down, up) in pairs.items():
        if naming == "diffusers":
            tensors[f"transformer.{module}.lora_A.weight"] = down
            tensors[f"transformer.{module}.lora_B.weight"] = up
            continue
        block, name = module.split(".", 2)[1], module.split(".", 2)[2]
        prefix = f"diffusion_model.blocks.{block}.{LORA_LAYERS[name]}"
        a, b = ("lora_down", "lora_up") if naming == "wan" else ("lora_A", "lora_B")
        tensors[f"{prefix}.{a}.weight"] = down
        tensors[f"{prefix}.{b}.weight"] = up
        tensors[f"{prefix}.alpha"] = torch.tensor(float(alpha))
    return tensors


def lora_metadata(rank: int, alpha: float) -> dict[str, str]:
    """diffusers' adapter record in a safetensors header: what carries alpha in the diffusers naming."""
    config = {"r": rank, "lora_alpha": alpha, "target_modules": sorted(LORA_LAYERS)}
    return {"lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in config.items()})}
