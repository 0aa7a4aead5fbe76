"""What a loaded checkpoint gives the pipeline: tokenizer, text encoder, VAE and the denoising expert(s)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the classes are only named here; importing them costs seconds
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import PreTrainedTokenizerBase, UMT5EncoderModel


@dataclass
class WanComponents:
    """The loaded parts. A one-model checkpoint (TI2V-5B) fills ``high_noise_model`` with the model every
    step runs and leaves ``low_noise_model`` None, as diffusers leaves ``transformer_2`` None."""

    tokenizer: PreTrainedTokenizerBase
    text_encoder: UMT5EncoderModel
    vae: AutoencoderKLWan
    high_noise_model: WanTransformer3DModel
    low_noise_model: WanTransformer3DModel | None
    layout: str  # "official" or "diffusers"

    @property
    def experts(self) -> tuple[WanTransformer3DModel, ...]:
        """The denoising models, high-noise first: two for the A14B mixtures, one for a dense model."""
        return tuple(m for m in (self.high_noise_model, self.low_noise_model) if m is not None)
