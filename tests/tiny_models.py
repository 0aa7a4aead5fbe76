"""Builders for tiny random Wan2.2 checkpoints (same classes as A14B, toy sizes) used by the tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from wan.tiny_tokenizer import train_caption_tokenizer

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
    low_noise_model: WanTransformer3DModel


def tiny_transformer(seed: int) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
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


def save_diffusers_layout(parts: TinyParts, root: Path, boundary_ratio: float = 0.875) -> Path:
    """Write ``parts`` as a diffusers ``WanPipeline`` folder (model_index.json and one folder a part)."""
    from diffusers import WanPipeline

    pipe = WanPipeline(
        tokenizer=parts.tokenizer,
        text_encoder=parts.text_encoder,
        vae=parts.vae,
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=12.0
        ),
        transformer=parts.high_noise_model,
        transformer_2=parts.low_noise_model,
        boundary_ratio=boundary_ratio,
    )
    pipe.save_pretrained(root)
    return root
