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
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from transformers import AutoTokenizer, PreTrainedTokenizerBase, UMT5EncoderModel

from wan.checkpoints.check import CheckpointInfo
from wan.checkpoints.components import WanComponents
from wan.checkpoints.files import (
    CheckpointError,
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
    wan_to_diffusers_transformer_key,
    wan_to_diffusers_vae_key,
)
from wan.checkpoints.models import (
    Loader,
    build_meta,
    check_tensors,
    diffusers_dtype_rule,
    finish,
    rename_tensors,
    stream_into,
    transformers_dtype_rule,
)
from wan.checkpoints.names import OFFICIAL_T5, OFFICIAL_TOKENIZER, ROOT, WAN22_VAE_Z_DIM, WEIGHTS_STEM

logger = logging.getLogger(__name__)

TEXT_EMBEDDING_KEY = "condition_embedder.text_embedder.linear_1.weight"

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


def vae_config_from_state_dict(infos: dict[str, TensorInfo]) -> dict[str, object]:
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


def prepare_vae(path: Path, device: torch.device, *, fix: str) -> tuple[AutoencoderKLWan, Loader]:
    """Validate an official VAE file (Wan2.1 or Wan2.2); return its (meta) model and its loader."""
    where = path.name
    state_dict = torch_load(path, fix)
    infos = infos_of_state_dict(state_dict, path)
    renamed = rename_tensors(infos, wan_to_diffusers_vae_key, where=where, fix=fix)
    try:
        config = vae_config_from_state_dict(infos)
    except KeyError as exc:
        raise CheckpointError(f"{where}: tensor {exc.args[0]} is missing: {fix}") from exc
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
    state_dict = torch_load(path, fix)
    infos = infos_of_state_dict(state_dict, path)
    renamed = rename_tensors(infos, umt5_wan_key_to_hf, where=where, fix=fix)
    try:
        config = umt5_config_from_state_dict(state_dict)
    except KeyError as exc:
        raise CheckpointError(f"{where}: tensor {exc.args[0]} is missing: {fix}") from exc
    except (ValueError, ZeroDivisionError) as exc:
        raise CheckpointError(
            f"{where}: tensor shapes do not describe a umT5 encoder ({first_line(exc)}): {fix}"
        ) from exc
    model = build_meta(where, fix, lambda: UMT5EncoderModel(config))

    def stored_name(key: str) -> str:
        return umt5_hf_key_to_wan(key) or key

    check_tensors(model, renamed, where=where, fix=fix, stored_name=stored_name, optional=[UMT5_TIED_KEY])
    target = dtype or disk_dtype(infos.values())

    def load() -> UMT5EncoderModel:
        logger.info("loading %s (%s) to %s", path, str(target).removeprefix("torch."), device)
        tensors = ((renamed_key, state_dict[info.name]) for renamed_key, info in renamed.items())
        stream_into(model, tensors, transformers_dtype_rule(model, target), device)
        model.encoder.embed_tokens.weight = model.shared.weight  # tied, as from_pretrained leaves them
        finish(model, where, fix, device)
        return model

    return load


def load_tokenizer(folder: Path, fix: str) -> PreTrainedTokenizerBase:
    require_dir(folder, fix)
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load the tokenizer in {folder} ({first_line(exc)}): {fix}") from exc


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
