"""Find, validate and load Wan2.2 checkpoints in the official or the diffusers layout.

Everything is checked before the first weight is loaded (files present and readable, every tensor
present with the shape the checkpoint's own config implies), so a broken download fails in seconds
with one line that names the file or tensor, instead of a meta-tensor error after minutes of loading.
Official experts are streamed shard by shard into a model built on the meta device, so no full fp32
copy of a 14B expert is ever held besides the model itself.

Checking a folder (``describe_checkpoint``, ``check_checkpoint``) imports torch and safetensors only;
diffusers and transformers are imported when ``load_components`` or a key map is first used.

Modules: ``check`` (what a folder holds and whether it fits a task, from configs and headers only),
``names`` (the layouts' file names), ``keymaps`` (official <-> diffusers names and configs), ``files``
(reading and checking files), ``models`` (stored tensors -> meta-device models), ``official`` and
``diffusers_layout`` (the two layouts), ``components`` (what loading returns).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wan.checkpoints.check import (
    RELEASED_MODELS,
    CheckpointInfo,
    ExpectedModel,
    check_checkpoint,
    describe_checkpoint,
    detect_layout,
)
from wan.checkpoints.components import WanComponents

if TYPE_CHECKING:
    import torch

_KEYMAPS = (
    "diffusers_to_wan_transformer_key",
    "diffusers_to_wan_vae_key",
    "transformer_config_from_wan",
    "umt5_config_from_state_dict",
)
__all__ = [
    "RELEASED_MODELS",
    "CheckpointInfo",
    "ExpectedModel",
    "WanComponents",
    "check_checkpoint",
    "describe_checkpoint",
    "detect_layout",
    "load_components",
    *_KEYMAPS,
]


def __getattr__(name: str) -> Any:
    """The key maps, imported on first use: they need diffusers, which checking a folder does not."""
    if name in _KEYMAPS:
        return getattr(importlib.import_module("wan.checkpoints.keymaps"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


logger = logging.getLogger(__name__)


def load_components(
    ckpt_dir: str | Path,
    *,
    expected: ExpectedModel | None = None,
    transformer_dtype: torch.dtype | None = None,
    text_encoder_dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> WanComponents:
    """Load tokenizer, umT5 encoder, VAE and the expert(s) from either layout.

    With ``expected``, a checkpoint that cannot run that task is refused first (``check_checkpoint``).
    ``None`` dtypes keep what is stored on disk; a low-precision ``transformer_dtype`` keeps the
    experts' ``_keep_in_fp32_modules`` in fp32 as ``from_pretrained`` does. The VAE is always fp32.
    Every file and tensor shape is checked before loading; problems raise :class:`CheckpointError`.
    """
    import torch

    from wan.checkpoints.diffusers_layout import load_diffusers
    from wan.checkpoints.official import load_official

    info = check_checkpoint(ckpt_dir, expected) if expected is not None else describe_checkpoint(ckpt_dir)
    device = torch.device(device)
    logger.info("loading the %s layout from %s (%d expert(s))", info.layout, info.root, len(info.experts))
    load = load_official if info.layout == "official" else load_diffusers
    return load(info, transformer_dtype, text_encoder_dtype, device)
