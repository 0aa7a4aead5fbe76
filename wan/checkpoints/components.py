"""What a loaded checkpoint gives the pipeline: tokenizer, text encoder, VAE and the denoising expert(s)."""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import AutoencoderKLWan, WanTransformer3DModel
from transformers import PreTrainedTokenizerBase, UMT5EncoderModel


@dataclass
class WanComponents:
    tokenizer: PreTrainedTokenizerBase
    text_encoder: UMT5EncoderModel
    vae: AutoencoderKLWan
    high_noise_model: WanTransformer3DModel
    low_noise_model: WanTransformer3DModel
    layout: str  # "official" or "diffusers"
