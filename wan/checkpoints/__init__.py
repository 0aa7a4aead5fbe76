"""Find, validate and load Wan2.2 checkpoints in the official or the diffusers layout.

Everything is checked before the first weight is loaded (files present and readable, every tensor
present with the shape the checkpoint's own config implies), so a broken download fails in seconds
with one line that names the file or tensor, instead of a meta-tensor error after minutes of loading.
Official experts are streamed shard by shard into a model built on the meta device, so no full fp32
copy of a 14B expert is ever held besides the model itself.

Modules: ``keymaps`` (official <-> diffusers names and configs), ``files`` (reading and checking files),
``models`` (stored tensors -> meta-device models), ``official`` and ``diffusers_layout`` (the two layouts).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from wan.checkpoints.components import WanComponents
from wan.checkpoints.diffusers_layout import DIFFUSERS_EXPERTS, load_diffusers
from wan.checkpoints.files import CheckpointError
from wan.checkpoints.keymaps import (
    diffusers_to_wan_transformer_key,
    diffusers_to_wan_vae_key,
    transformer_config_from_wan,
    umt5_config_from_state_dict,
    umt5_hf_to_wan,
    umt5_wan_to_hf,
)
from wan.checkpoints.official import OFFICIAL_EXPERTS, load_official

__all__ = [
    "CheckpointError",
    "WanComponents",
    "detect_layout",
    "diffusers_to_wan_transformer_key",
    "diffusers_to_wan_vae_key",
    "load_components",
    "transformer_config_from_wan",
    "umt5_config_from_state_dict",
    "umt5_hf_to_wan",
    "umt5_wan_to_hf",
]

logger = logging.getLogger(__name__)


def detect_layout(ckpt_dir: Path) -> str:
    """``"official"`` or ``"diffusers"``, from the folders present (a diffusers ``model_index.json`` wins)."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        raise CheckpointError(
            f"checkpoint folder {root} does not exist: download Wan-AI/Wan2.2-T2V-A14B (or its -Diffusers "
            "version) and pass its folder"
        )
    is_diffusers = (root / "model_index.json").is_file() or all((root / n).is_dir() for n in DIFFUSERS_EXPERTS)
    is_official = all((root / n).is_dir() for n in OFFICIAL_EXPERTS)
    if is_diffusers:
        if is_official:
            logger.warning("%s holds both layouts; using the diffusers one (model_index.json)", root)
        return "diffusers"
    if is_official:
        return "official"
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    shown = ", ".join(found[:10]) + (", ..." if len(found) > 10 else "") if found else "nothing"
    raise CheckpointError(
        f"{root} is not a Wan2.2 T2V-A14B checkpoint: expected high_noise_model/ and low_noise_model/ "
        "(official layout) or model_index.json with transformer/ and transformer_2/ (diffusers layout), "
        f"found {shown}: point --ckpt_dir at the downloaded folder"
    )


def load_components(
    ckpt_dir: str | Path,
    *,
    transformer_dtype: torch.dtype | None = None,
    text_encoder_dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> WanComponents:
    """Load tokenizer, umT5 encoder, VAE and both experts from either layout.

    ``None`` dtypes keep what is stored on disk; a low-precision ``transformer_dtype`` keeps the
    experts' ``_keep_in_fp32_modules`` in fp32 as ``from_pretrained`` does. The VAE is always fp32.
    Every file and tensor shape is checked before loading; problems raise :class:`CheckpointError`.
    """
    root = Path(ckpt_dir)
    layout = detect_layout(root)
    device = torch.device(device)
    logger.info("loading the %s layout from %s", layout, root)
    if layout == "official":
        return load_official(root, transformer_dtype, text_encoder_dtype, device)
    return load_diffusers(root, transformer_dtype, text_encoder_dtype, device)
