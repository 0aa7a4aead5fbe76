"""The diffusers layout (``WanPipeline`` / ``WanImageToVideoPipeline.save_pretrained``)::

    model_index.json  transformer/  [transformer_2/]  vae/  text_encoder/  tokenizer/  scheduler/

``transformer`` is the high-noise expert (the only model of a one-expert checkpoint), ``transformer_2``
the low-noise one. Each folder is checked against its own config.json (tensor names and shapes from the
safetensors headers) before ``from_pretrained`` loads it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from transformers import UMT5Config, UMT5EncoderModel

from wan.checkpoints.check import CheckpointInfo
from wan.checkpoints.components import WanComponents
from wan.checkpoints.files import (
    TensorInfo,
    disk_dtype,
    first_line,
    has_safetensors,
    read_json,
    read_safetensors,
    require_dir,
)
from wan.checkpoints.models import Loader, build_meta, check_tensors, load_tokenizer, own_memory
from wan.checkpoints.names import TEXT_ENCODER_STEM, WEIGHTS_STEM
from wan.errors import CheckpointError

logger = logging.getLogger(__name__)


def prepare_model(
    folder: Path,
    cls: Any,
    *,
    is_transformers: bool,
    dtype: torch.dtype | None,
    device: torch.device,
    fix: str,
) -> Loader:
    """Validate a diffusers/transformers model folder against its own config; return its loader."""
    where = f"{folder.name}/"
    require_dir(folder, fix)
    config_path = folder / "config.json"
    config_dict = read_json(config_path, fix)
    stem = TEXT_ENCODER_STEM if is_transformers else WEIGHTS_STEM
    infos: dict[str, TensorInfo] = {}
    if has_safetensors(folder, stem) or not any(folder.glob("*.bin")):
        infos = read_safetensors(folder, stem, fix)
        if is_transformers:
            try:
                config = UMT5Config.from_dict(config_dict)
            except Exception as exc:
                raise CheckpointError(f"{config_path} is not a UMT5 config ({first_line(exc)}): {fix}") from exc
            model = build_meta(where, fix, lambda: cls(config))
            # A tied pair is stored once, under either name (transformers saves the source only).
            tied = dict(getattr(cls, "_tied_weights_keys", None) or {})
            optional = [b for a, b in [*tied.items(), *((v, k) for k, v in tied.items())] if a in infos]
        else:
            model = build_meta(where, fix, lambda: cls.from_config(config_dict))
            optional = []
        check_tensors(model, infos, where=where, fix=fix, optional=optional)
        del model
    else:
        logger.warning("%s has no safetensors weights; loading it without a shape check", folder)
    target = dtype or (disk_dtype(infos.values()) if infos else None)

    def load() -> Any:
        logger.info("loading %s (%s) to %s", folder, str(target).removeprefix("torch."), device)
        kwargs: dict[str, Any] = {"local_files_only": True}
        kwargs["dtype" if is_transformers else "torch_dtype"] = target
        if device.type != "cpu":
            kwargs["device_map"] = {"": device}
        try:
            model = cls.from_pretrained(str(folder), **kwargs)
        except Exception as exc:
            raise CheckpointError(f"cannot load {folder} ({first_line(exc)}): {fix}") from exc
        own_memory(model)
        return model.eval()

    return load


def load_diffusers(
    info: CheckpointInfo,
    transformer_dtype: torch.dtype | None,
    text_encoder_dtype: torch.dtype | None,
    device: torch.device,
) -> WanComponents:
    """Check every folder of a described diffusers checkpoint, then load them (all checks before any weights)."""
    root = info.root

    def fix(name: str) -> str:
        return f"re-download {name}/ from {info.release}"

    tokenizer = load_tokenizer(root / "tokenizer", fix("tokenizer"))
    experts = [
        prepare_model(
            root / name,
            WanTransformer3DModel,
            is_transformers=False,
            dtype=transformer_dtype,
            device=device,
            fix=fix(name),
        )
        for name in info.experts
    ]
    vae = prepare_model(
        root / "vae", AutoencoderKLWan, is_transformers=False, dtype=torch.float32, device=device, fix=fix("vae")
    )
    text_encoder = prepare_model(
        root / "text_encoder",
        UMT5EncoderModel,
        is_transformers=True,
        dtype=text_encoder_dtype,
        device=device,
        fix=fix("text_encoder"),
    )
    text_encoder_model, vae_model = text_encoder(), vae()
    models = [load() for load in experts]
    high, low = models[0], (models[1] if len(models) > 1 else None)
    return WanComponents(tokenizer, text_encoder_model, vae_model, high, low, layout="diffusers")
