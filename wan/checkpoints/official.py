"""The official Wan2.2 layout: Wan key names, streamed into diffusers/transformers models.

Two-expert releases (T2V-A14B, I2V-A14B)::

    high_noise_model/  low_noise_model/     config.json (WanModel format) + sharded safetensors
    Wan2.1_VAE.pth                          torch.save'd VAE state dict
    models_t5_umt5-xxl-enc-bf16.pth         torch.save'd state dict of Wan's own T5 encoder
    google/umt5-xxl/                        tokenizer files

The one-expert release (TI2V-5B) keeps its model's config.json and shards at the root, and
``Wan2.2_VAE.pth`` instead of ``Wan2.1_VAE.pth``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from transformers import UMT5EncoderModel

from wan.checkpoints.check import CheckpointInfo
from wan.checkpoints.components import WanComponents
from wan.checkpoints.files import (
    TensorInfo,
    disk_dtype,
    first_line,
    infos_of_state_dict,
    iter_safetensors,
    read_json,
    read_safetensors,
    require_dir,
    torch_load,
)
from wan.checkpoints.keymaps import (
    UMT5_TIED_KEY,
    diffusers_to_wan_transformer_key,
    diffusers_to_wan_vae_key,
    transformer_config_from_wan,
    umt5_config_from_state_dict,
    umt5_hf_key_to_wan,
    umt5_wan_key_to_hf,
    vae_config_from_state_dict,
    wan_to_diffusers_transformer_key,
    wan_to_diffusers_vae_key,
)
from wan.checkpoints.models import (
    Loader,
    build_meta,
    check_tensors,
    diffusers_dtype_rule,
    finish,
    load_tokenizer,
    rename_tensors,
    stream_into,
    transformers_dtype_rule,
)
from wan.checkpoints.names import OFFICIAL_T5, OFFICIAL_TOKENIZER, ROOT, WEIGHTS_STEM
from wan.errors import CheckpointError

logger = logging.getLogger(__name__)

TEXT_EMBEDDING_KEY = "condition_embedder.text_embedder.linear_1.weight"


def prepare_expert(
    folder: Path, dtype: torch.dtype | None, device: torch.device, *, fix: str, where: str
) -> tuple[WanTransformer3DModel, Loader]:
    """Validate one official expert folder; return its (meta) model and the function that streams it in."""
    require_dir(folder, fix)
    config_path = folder / "config.json"
    wan_config = read_json(config_path, fix)
    infos = read_safetensors(folder, WEIGHTS_STEM, fix)
    renamed = rename_tensors(infos, wan_to_diffusers_transformer_key, where=where, fix=fix)
    text = renamed.get(TEXT_EMBEDDING_KEY)
    text_dim = text.shape[-1] if text is not None and len(text.shape) == 2 else None
    try:
        config = transformer_config_from_wan(wan_config, text_dim=text_dim)
    except (KeyError, ValueError, TypeError) as exc:
        what = f"has no {exc.args[0]!r}" if isinstance(exc, KeyError) else f"is not usable ({first_line(exc)})"
        raise CheckpointError(f"{config_path} {what}: {fix}") from exc
    model = build_meta(where, fix, lambda: WanTransformer3DModel(**config))
    check_tensors(model, renamed, where=where, fix=fix, stored_name=diffusers_to_wan_transformer_key)
    target = dtype or disk_dtype(infos.values())

    def load() -> WanTransformer3DModel:
        logger.info("loading %s (%s, %d tensors) to %s", folder, str(target).removeprefix("torch."), len(infos), device)
        stored_to_key = {info.name: key for key, info in renamed.items()}
        tensors = ((stored_to_key[n], t) for n, t in iter_safetensors(infos, list(infos)))
        stream_into(model, tensors, diffusers_dtype_rule(model, target), device)
        finish(model, where, fix, device)
        return model

    return model, load


def _read_pth(
    path: Path, rename: Callable[[str], str | None], config_of: Callable[[Mapping[str, TensorInfo]], Any], *, fix: str
) -> tuple[dict[str, torch.Tensor], dict[str, TensorInfo], Any]:
    """A torch.save'd state dict, its tensors by model name, and the config their shapes describe."""
    where = path.name
    state_dict = torch_load(path, fix)
    infos = infos_of_state_dict(state_dict, path)
    renamed = rename_tensors(infos, rename, where=where, fix=fix)
    try:
        return state_dict, renamed, config_of(infos)
    except KeyError as exc:
        raise CheckpointError(f"{where}: tensor {exc.args[0]} is missing: {fix}") from exc
    except (ValueError, ZeroDivisionError) as exc:
        raise CheckpointError(f"{where}: tensor shapes do not describe the model ({first_line(exc)}): {fix}") from exc


def prepare_vae(path: Path, device: torch.device, *, fix: str) -> tuple[AutoencoderKLWan, Loader]:
    """Validate an official VAE file (Wan2.1 or Wan2.2); return its (meta) model and its loader."""
    where = path.name
    state_dict, renamed, config = _read_pth(path, wan_to_diffusers_vae_key, vae_config_from_state_dict, fix=fix)
    model = build_meta(where, fix, lambda: AutoencoderKLWan(**config))

    def stored_name(key: str) -> str:
        return diffusers_to_wan_vae_key(
            key, residual=model.config.is_residual, num_res_blocks=model.config.num_res_blocks
        )

    check_tensors(model, renamed, where=where, fix=fix, stored_name=stored_name)

    def load() -> AutoencoderKLWan:
        logger.info("loading %s (float32) to %s", path, device)
        stored_to_key = {info.name: key for key, info in renamed.items()}
        tensors = ((stored_to_key[n], t) for n, t in state_dict.items())
        stream_into(model, tensors, lambda key: torch.float32, device)
        finish(model, where, fix, device)
        return model

    return model, load


def prepare_t5(path: Path, dtype: torch.dtype | None, device: torch.device, *, fix: str) -> Loader:
    """Validate Wan's T5-encoder file against the umT5 encoder its shapes describe; return its loader."""
    where = path.name
    state_dict, renamed, config = _read_pth(path, umt5_wan_key_to_hf, umt5_config_from_state_dict, fix=fix)
    model = build_meta(where, fix, lambda: UMT5EncoderModel(config))

    def stored_name(key: str) -> str:
        return umt5_hf_key_to_wan(key) or key

    check_tensors(model, renamed, where=where, fix=fix, stored_name=stored_name, optional=[UMT5_TIED_KEY])
    target = dtype or disk_dtype(renamed.values())

    def load() -> UMT5EncoderModel:
        logger.info("loading %s (%s) to %s", path, str(target).removeprefix("torch."), device)
        tensors = ((renamed_key, state_dict[info.name]) for renamed_key, info in renamed.items())
        stream_into(model, tensors, transformers_dtype_rule(model, target), device)
        model.encoder.embed_tokens.weight = model.shared.weight  # tied, as from_pretrained leaves them
        finish(model, where, fix, device)
        return model

    return load


def load_official(
    info: CheckpointInfo,
    transformer_dtype: torch.dtype | None,
    text_encoder_dtype: torch.dtype | None,
    device: torch.device,
) -> WanComponents:
    """Check every part of a described official checkpoint, then load them (all checks before any weights)."""
    root, release = info.root, info.release
    tokenizer = load_tokenizer(root / OFFICIAL_TOKENIZER, f"re-download {OFFICIAL_TOKENIZER}/ from {release}")
    experts = []
    for name in info.experts:
        where = f"{root.name}/" if name == ROOT else f"{name}/"
        fix = f"re-download {where} from {release}"
        experts.append(prepare_expert(root / name, transformer_dtype, device, fix=fix, where=where)[1])
    _, vae = prepare_vae(root / info.vae, device, fix=f"re-download {info.vae} from {release}")
    t5 = prepare_t5(root / OFFICIAL_T5, text_encoder_dtype, device, fix=f"re-download {OFFICIAL_T5} from {release}")
    text_encoder, vae_model = t5(), vae()
    models = [load() for load in experts]
    high, low = models[0], (models[1] if len(models) > 1 else None)
    return WanComponents(tokenizer, text_encoder, vae_model, high, low, layout="official")
