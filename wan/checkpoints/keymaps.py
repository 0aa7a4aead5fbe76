"""Official Wan <-> diffusers/transformers tensor names, and official configs as diffusers/transformers configs.

Pure functions: no files, no models. The forward direction (official -> diffusers) uses diffusers' own
converters where they exist; each reverse map is checked against the forward one, so the two cannot drift.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers
from transformers import UMT5Config

from wan.checkpoints.names import WAN22_VAE_Z_DIM

DEFAULT_TEXT_DIM = 4096  # umT5-xxl d_model; official expert configs do not record it
UMT5_MAX_DISTANCE = 128  # fixed in Wan's T5; not stored in the .pth
OFFICIAL_MODEL_TYPES = ("t2v", "i2v", "ti2v")  # WanModel.model_type values this loader handles

# --------------------------------------------------------------------------------------------------
# Transformer (WanModel <-> WanTransformer3DModel)
# --------------------------------------------------------------------------------------------------

_TRANSFORMER_TO_WAN = (  # diffusers -> Wan, applied in order; inverse of diffusers' rename table
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("attn1", "self_attn"),
    ("attn2", "cross_attn"),
    (".to_out.0.", ".o."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
    ("proj_out", "head.head"),
    # Wan's norm3 (cross-attention input) is diffusers' norm2 and vice versa.
    ("norm2", "norm__swap"),
    ("norm3", "norm2"),
    ("norm__swap", "norm3"),
)


def wan_to_diffusers_transformer_key(key: str) -> str:
    """Diffusers name of one Wan transformer tensor, by diffusers' own converter (a per-key rename)."""
    (new_key,) = convert_wan_transformer_to_diffusers({key: None}).keys()
    return new_key


def diffusers_to_wan_transformer_key(key: str) -> str:
    """Wan name of one diffusers transformer tensor; checked against the forward converter."""
    if key == "scale_shift_table":
        wan = "head.modulation"
    else:
        wan = key.replace(".scale_shift_table", ".modulation")
        for new, old in _TRANSFORMER_TO_WAN:
            wan = wan.replace(new, old)
    if wan_to_diffusers_transformer_key(wan) != key:
        raise KeyError(f"no Wan name for diffusers transformer tensor {key}")
    return wan


def transformer_config_from_wan(config: Mapping[str, Any], text_dim: int | None = None) -> dict[str, Any]:
    """``WanTransformer3DModel`` kwargs from an official ``WanModel`` config.json (raises KeyError/ValueError)."""
    model_type = config.get("model_type", "t2v")
    if model_type not in OFFICIAL_MODEL_TYPES:
        raise ValueError(
            f'model_type is "{model_type}", this loader handles {", ".join(OFFICIAL_MODEL_TYPES)} models only'
        )
    dim, num_heads = int(config["dim"]), int(config["num_heads"])
    if dim % num_heads:
        raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
    return {
        "patch_size": [int(p) for p in config.get("patch_size", (1, 2, 2))],  # a list, as from_pretrained gives
        "num_attention_heads": num_heads,
        "attention_head_dim": dim // num_heads,
        "in_channels": int(config["in_dim"]),
        "out_channels": int(config["out_dim"]),
        "text_dim": int(config.get("text_dim") or text_dim or DEFAULT_TEXT_DIM),
        "freq_dim": int(config["freq_dim"]),
        "ffn_dim": int(config["ffn_dim"]),
        "num_layers": int(config["num_layers"]),
        "cross_attn_norm": bool(config.get("cross_attn_norm", True)),
        "qk_norm": "rms_norm_across_heads" if config.get("qk_norm", True) else None,
        "eps": float(config.get("eps", 1e-6)),
    }


# --------------------------------------------------------------------------------------------------
# VAE (Wan2.1 and Wan2.2 VAE <-> AutoencoderKLWan)
# --------------------------------------------------------------------------------------------------

_RESNET_TO_WAN = (
    ("norm1.gamma", "residual.0.gamma"),
    ("conv1.", "residual.2."),
    ("norm2.gamma", "residual.3.gamma"),
    ("conv2.", "residual.6."),
    ("conv_shortcut.", "shortcut."),
)
_RESNET_TO_DIFFUSERS = tuple((old, new) for new, old in _RESNET_TO_WAN)


def _rename_prefix(rest: str, table: tuple[tuple[str, str], ...]) -> str:
    for src, dst in table:
        if rest.startswith(src):
            return dst + rest[len(src) :]
    return rest


# Wan2.2 VAE (``is_residual``): each down/up stage is one block holding its resnets and, last, a resample.
_WAN22_STAGE = re.compile(r"(encoder\.downsamples|decoder\.upsamples)\.(\d+)\.(downsamples|upsamples)\.(\d+)\.(.+)")


def wan_to_diffusers_vae_key(key: str) -> str:
    """Diffusers name of one Wan VAE tensor (Wan2.1 by diffusers' own converter, Wan2.2 stages by their layout)."""
    if m := _WAN22_STAGE.fullmatch(key):
        side, blocks, sampler = (
            ("encoder", "down_blocks", "downsampler")
            if key.startswith("encoder")
            else ("decoder", "up_blocks", "upsampler")
        )
        stage, index, rest = m[2], m[4], m[5]
        if rest.startswith(("resample.", "time_conv.")):
            return f"{side}.{blocks}.{stage}.{sampler}.{rest}"
        return f"{side}.{blocks}.{stage}.resnets.{index}.{_rename_prefix(rest, _RESNET_TO_DIFFUSERS)}"
    (new_key,) = convert_wan_vae_to_diffusers({key: None}).keys()
    return new_key


def diffusers_to_wan_vae_key(key: str, *, residual: bool = False, num_res_blocks: int = 2) -> str:
    """Wan name of one diffusers ``AutoencoderKLWan`` tensor; checked against the forward map.

    ``residual`` (the Wan2.2 VAE) and ``num_res_blocks`` come from the model's config: a Wan2.2 stage
    names its resample after its resnets (encoder: ``num_res_blocks``, decoder: one more).
    """
    wan = key
    fixed = {
        "quant_conv.": "conv1.",
        "post_quant_conv.": "conv2.",
        "encoder.conv_in.": "encoder.conv1.",
        "decoder.conv_in.": "decoder.conv1.",
        "encoder.norm_out.": "encoder.head.0.",
        "decoder.norm_out.": "decoder.head.0.",
        "encoder.conv_out.": "encoder.head.2.",
        "decoder.conv_out.": "decoder.head.2.",
    }
    for new, old in fixed.items():
        if key.startswith(new):
            wan = old + key[len(new) :]
            break
    else:
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            wan = f"{m[1]}.middle.{2 * int(m[2])}.{_rename_prefix(m[3], _RESNET_TO_WAN)}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
            wan = f"{m[1]}.middle.1.{m[2]}"
        elif residual and (m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)):
            wan = f"encoder.downsamples.{m[1]}.downsamples.{m[2]}.{_rename_prefix(m[3], _RESNET_TO_WAN)}"
        elif residual and (m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsampler\.(.+)", key)):
            wan = f"encoder.downsamples.{m[1]}.downsamples.{num_res_blocks}.{m[2]}"
        elif residual and (m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)):
            wan = f"decoder.upsamples.{m[1]}.upsamples.{m[2]}.{_rename_prefix(m[3], _RESNET_TO_WAN)}"
        elif residual and (m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsampler\.(.+)", key)):
            wan = f"decoder.upsamples.{m[1]}.upsamples.{num_res_blocks + 1}.{m[2]}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.+)", key):
            wan = f"encoder.downsamples.{m[1]}.{_rename_prefix(m[2], _RESNET_TO_WAN)}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            wan = f"decoder.upsamples.{4 * int(m[1]) + int(m[2])}.{_rename_prefix(m[3], _RESNET_TO_WAN)}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
            wan = f"decoder.upsamples.{4 * int(m[1]) + 3}.{m[2]}"
    if wan_to_diffusers_vae_key(wan) != key:
        raise KeyError(f"no Wan name for diffusers VAE tensor {key}")
    return wan


# The Wan2.2 VAE's per-channel latent statistics: constants of the release's code, not stored in its .pth.
WAN22_VAE_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)  # fmt: skip
WAN22_VAE_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip


def vae_config_from_state_dict(infos: Mapping[str, Any]) -> dict[str, object]:
    """``AutoencoderKLWan`` kwargs of an official VAE file (Wan2.1 or Wan2.2) from its tensor shapes.

    Raises KeyError naming a tensor the shapes are read from. The rest of the architecture is the
    release's; a file that differs fails the tensor check with the first tensor that does not fit.
    """

    def shape(key: str) -> tuple[int, ...]:
        if key not in infos:
            raise KeyError(key)
        return infos[key].shape

    base_dim, z_dim = shape("encoder.conv1.weight")[0], shape("conv1.weight")[0] // 2
    if not any(key.startswith("encoder.downsamples.0.downsamples.") for key in infos):
        return {"base_dim": base_dim, "z_dim": z_dim}  # Wan2.1 VAE: RGB in and out, 4x8x8
    in_channels = shape("encoder.conv1.weight")[1]  # RGB patchified 2x2: 12
    patch = round((in_channels // 3) ** 0.5)
    config: dict[str, object] = {
        "base_dim": base_dim,
        "decoder_base_dim": shape("decoder.head.0.gamma")[0],
        "z_dim": z_dim,
        "is_residual": True,
        "in_channels": in_channels,
        "out_channels": shape("decoder.head.2.weight")[0],
        "patch_size": patch,
        "scale_factor_temporal": 4,
        "scale_factor_spatial": 8 * patch,
    }
    if z_dim == WAN22_VAE_Z_DIM:
        config |= {"latents_mean": list(WAN22_VAE_LATENTS_MEAN), "latents_std": list(WAN22_VAE_LATENTS_STD)}
    return config


# --------------------------------------------------------------------------------------------------
# umT5 encoder (Wan's T5 <-> transformers UMT5EncoderModel); diffusers has no converter for it
# --------------------------------------------------------------------------------------------------

_UMT5_BLOCK_WAN_TO_HF = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",  # gated (GELU) branch
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",  # linear branch
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_UMT5_BLOCK_HF_TO_WAN = {hf: wan for wan, hf in _UMT5_BLOCK_WAN_TO_HF.items()}
_UMT5_TOP_WAN_TO_HF = {"token_embedding.weight": "shared.weight", "norm.weight": "encoder.final_layer_norm.weight"}
_UMT5_TOP_HF_TO_WAN = {hf: wan for wan, hf in _UMT5_TOP_WAN_TO_HF.items()}
UMT5_TIED_KEY = "encoder.embed_tokens.weight"  # same tensor as shared.weight


def _umt5_rename(key: str, top: dict[str, str], block: dict[str, str], source: str, target: str) -> str | None:
    if key in top:
        return top[key]
    m = re.fullmatch(rf"{re.escape(source)}\.(\d+)\.(.+)", key)
    if m and m[2] in block:
        return f"{target}.{m[1]}.{block[m[2]]}"
    return None


def umt5_wan_key_to_hf(key: str) -> str | None:
    """transformers ``UMT5EncoderModel`` name of one Wan T5-encoder tensor; None if Wan has no such tensor."""
    return _umt5_rename(key, _UMT5_TOP_WAN_TO_HF, _UMT5_BLOCK_WAN_TO_HF, "blocks", "encoder.block")


def umt5_hf_key_to_wan(key: str) -> str | None:
    """Wan T5-encoder name of one ``UMT5EncoderModel`` tensor; None if unknown (the tied copy included)."""
    return _umt5_rename(key, _UMT5_TOP_HF_TO_WAN, _UMT5_BLOCK_HF_TO_WAN, "encoder.block", "blocks")


def umt5_config_from_state_dict(state_dict: Mapping[str, Any]) -> UMT5Config:
    """``UMT5Config`` of a Wan T5-encoder state dict from its tensor shapes (KeyError names a missing tensor)."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in state_dict:
            raise KeyError(key)
        return tuple(state_dict[key].shape)

    vocab, d_model = shape("token_embedding.weight")
    num_buckets, num_heads = shape("blocks.0.pos_embedding.embedding.weight")
    blocks = {int(m[1]) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    return UMT5Config(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=shape("blocks.0.attn.q.weight")[0] // num_heads,
        d_ff=shape("blocks.0.ffn.fc1.weight")[0],
        num_layers=max(blocks) + 1,
        num_decoder_layers=max(blocks) + 1,
        num_heads=num_heads,
        relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=UMT5_MAX_DISTANCE,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
        tie_word_embeddings=True,
    )
