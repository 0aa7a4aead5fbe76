"""Find, validate and load Wan2.2 T2V-A14B checkpoints in the official or the diffusers layout.

Official layout (the Wan-AI/Wan2.2-T2V-A14B release)::

    high_noise_model/  low_noise_model/     config.json (WanModel format) + sharded safetensors, Wan key names
    Wan2.1_VAE.pth                          torch.save'd VAE state dict, Wan key names
    models_t5_umt5-xxl-enc-bf16.pth         torch.save'd state dict of Wan's own T5 encoder
    google/umt5-xxl/                        tokenizer files

Diffusers layout (``WanPipeline.save_pretrained``)::

    model_index.json  transformer/  transformer_2/  vae/  text_encoder/  tokenizer/  scheduler/

Everything is checked before the first weight is loaded (files present and readable, every tensor
present with the shape the checkpoint's own config implies), so a broken download fails in seconds
with one line that names the file or tensor, instead of a meta-tensor error after minutes of loading.
Official experts are streamed shard by shard into a model built on the meta device, so no full fp32
copy of a 14B expert is ever held besides the model itself.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from accelerate.utils import set_module_tensor_to_device
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers
from safetensors import safe_open
from transformers import AutoTokenizer, PreTrainedTokenizerBase, UMT5Config, UMT5EncoderModel

from wan.errors import CheckpointError

logger = logging.getLogger(__name__)

OFFICIAL_EXPERTS = ("high_noise_model", "low_noise_model")
OFFICIAL_VAE = "Wan2.1_VAE.pth"
OFFICIAL_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
OFFICIAL_TOKENIZER = "google/umt5-xxl"
DIFFUSERS_EXPERTS = ("transformer", "transformer_2")
DIFFUSERS_FOLDERS = ("transformer", "transformer_2", "vae", "text_encoder", "tokenizer")
WEIGHTS_STEM = "diffusion_pytorch_model"  # official experts and diffusers models
TEXT_ENCODER_STEM = "model"  # transformers models
DEFAULT_TEXT_DIM = 4096  # umT5-xxl d_model; official expert configs do not record it
UMT5_MAX_DISTANCE = 128  # fixed in Wan's T5; not stored in the .pth


@dataclass
class WanComponents:
    tokenizer: PreTrainedTokenizerBase
    text_encoder: UMT5EncoderModel
    vae: AutoencoderKLWan
    high_noise_model: WanTransformer3DModel
    low_noise_model: WanTransformer3DModel
    layout: str  # "official" or "diffusers"


# --------------------------------------------------------------------------------------------------
# Key mappings (pure functions)
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


def wan_to_diffusers_vae_key(key: str) -> str:
    """Diffusers name of one Wan VAE tensor, by diffusers' own converter (a per-key rename)."""
    (new_key,) = convert_wan_vae_to_diffusers({key: None}).keys()
    return new_key


_RESNET_TO_WAN = (
    ("norm1.gamma", "residual.0.gamma"),
    ("conv1.", "residual.2."),
    ("norm2.gamma", "residual.3.gamma"),
    ("conv2.", "residual.6."),
    ("conv_shortcut.", "shortcut."),
)


def _resnet_to_wan(rest: str) -> str:
    for new, old in _RESNET_TO_WAN:
        if rest.startswith(new):
            return old + rest[len(new) :]
    return rest


def diffusers_to_wan_vae_key(key: str) -> str:
    """Wan name of one diffusers ``AutoencoderKLWan`` tensor; checked against the forward converter."""
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
            wan = f"{m[1]}.middle.{2 * int(m[2])}.{_resnet_to_wan(m[3])}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
            wan = f"{m[1]}.middle.1.{m[2]}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.+)", key):
            wan = f"encoder.downsamples.{m[1]}.{_resnet_to_wan(m[2])}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            wan = f"decoder.upsamples.{4 * int(m[1]) + int(m[2])}.{_resnet_to_wan(m[3])}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
            wan = f"decoder.upsamples.{4 * int(m[1]) + 3}.{m[2]}"
    if wan_to_diffusers_vae_key(wan) != key:
        raise KeyError(f"no Wan name for diffusers VAE tensor {key}")
    return wan


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


def umt5_wan_key_to_hf(key: str) -> str | None:
    """transformers ``UMT5EncoderModel`` name of one Wan T5-encoder tensor; None if Wan has no such tensor."""
    if key in _UMT5_TOP_WAN_TO_HF:
        return _UMT5_TOP_WAN_TO_HF[key]
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if m and m[2] in _UMT5_BLOCK_WAN_TO_HF:
        return f"encoder.block.{m[1]}.{_UMT5_BLOCK_WAN_TO_HF[m[2]]}"
    return None


def umt5_hf_key_to_wan(key: str) -> str | None:
    """Wan T5-encoder name of one ``UMT5EncoderModel`` tensor; None if unknown (the tied copy included)."""
    if key in _UMT5_TOP_HF_TO_WAN:
        return _UMT5_TOP_HF_TO_WAN[key]
    m = re.fullmatch(r"encoder\.block\.(\d+)\.(.+)", key)
    if m and m[2] in _UMT5_BLOCK_HF_TO_WAN:
        return f"blocks.{m[1]}.{_UMT5_BLOCK_HF_TO_WAN[m[2]]}"
    return None


def umt5_wan_to_hf(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Rename a Wan T5-encoder state dict to ``UMT5EncoderModel`` names (plus the tied embedding copy)."""
    out = {}
    for key, value in state_dict.items():
        hf = umt5_wan_key_to_hf(key)
        if hf is None:
            raise KeyError(f"unknown Wan T5 tensor {key}")
        out[hf] = value
    if "shared.weight" in out:
        out[UMT5_TIED_KEY] = out["shared.weight"]
    return out


def umt5_hf_to_wan(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Rename a ``UMT5EncoderModel`` state dict to Wan T5-encoder names (the tied copy is dropped)."""
    out = {}
    for key, value in state_dict.items():
        if key == UMT5_TIED_KEY:
            if "shared.weight" not in state_dict:
                out["token_embedding.weight"] = value
            continue
        wan = umt5_hf_key_to_wan(key)
        if wan is None:
            raise KeyError(f"unknown UMT5EncoderModel tensor {key}")
        out[wan] = value
    return out


# --------------------------------------------------------------------------------------------------
# Configs from the official format
# --------------------------------------------------------------------------------------------------


def transformer_config_from_wan(config: Mapping[str, Any], text_dim: int | None = None) -> dict[str, Any]:
    """``WanTransformer3DModel`` kwargs from an official ``WanModel`` config.json (raises KeyError/ValueError)."""
    model_type = config.get("model_type", "t2v")
    if model_type != "t2v":
        raise ValueError(f'model_type is "{model_type}", this loader handles the "t2v" experts only')
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


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class _TensorInfo:
    """Where one stored tensor is, its name in that file, and what the header says about it."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype | None
    numel: int
    file: Path


def _first_line(exc: BaseException) -> str:
    """The gist of a library error: its first line, first sentence, at most 200 characters."""
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    return text.split(". ")[0][:200]


def _require_dir(path: Path, fix: str) -> None:
    if not path.is_dir():
        raise CheckpointError(f"missing folder {path}: {fix}")


def _require_file(path: Path, fix: str) -> None:
    if not path.is_file():
        raise CheckpointError(f"missing file {path}: {fix}")


def _read_json(path: Path, fix: str) -> dict[str, Any]:
    _require_file(path, fix)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({_first_line(exc)}): {fix}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object: {fix}")
    return data


def _safetensors_header(path: Path, fix: str) -> dict[str, _TensorInfo]:
    """Tensor names, shapes and dtypes of one safetensors file; opening it also checks its size."""
    try:
        with safe_open(str(path), framework="pt") as f:
            infos = {}
            for name in f.keys():
                sl = f.get_slice(name)
                shape = tuple(int(s) for s in sl.get_shape())
                numel = 1
                for s in shape:
                    numel *= s
                infos[name] = _TensorInfo(name, shape, _SAFETENSORS_DTYPES.get(sl.get_dtype()), numel, path)
            return infos
    except Exception as exc:  # safetensors raises its own error type, OSError, or others
        raise CheckpointError(f"{path} is corrupt or truncated ({_first_line(exc)}): {fix}") from exc


def _read_safetensors(folder: Path, stem: str, fix: str) -> dict[str, _TensorInfo]:
    """Headers of ``stem.safetensors``, or of every shard listed by ``stem.safetensors.index.json``."""
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    weight_map: dict[str, str] | None = None
    if index.is_file():
        weight_map = _read_json(index, fix).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map: {fix}")
        files = [folder / name for name in sorted(set(weight_map.values()))]
    elif single.is_file():
        files = [single]
    else:
        raise CheckpointError(f"missing file {index} (or the unsharded {single.name}): {fix}")
    for file in files:
        _require_file(file, fix)
    infos: dict[str, _TensorInfo] = {}
    for file in files:
        infos.update(_safetensors_header(file, fix))
    if weight_map is not None:
        for name, shard in weight_map.items():
            if name not in infos or infos[name].file.name != shard:
                raise CheckpointError(f"{index} lists tensor {name} in {shard}, which does not hold it: {fix}")
    return infos


def _iter_safetensors(infos: Mapping[str, _TensorInfo], names: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield the tensors ``names`` one at a time, opening each file once (in file order)."""
    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(infos[name].file, []).append(name)
    for file, file_names in by_file.items():
        logger.debug("reading %s (%d tensors)", file, len(file_names))
        with safe_open(str(file), framework="pt") as f:
            for name in file_names:
                yield name, f.get_tensor(name)


def _torch_load(path: Path, fix: str) -> dict[str, torch.Tensor]:
    """A torch.save'd state dict, memory-mapped (tensors are read on first use)."""
    _require_file(path, fix)
    try:
        data = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # zip errors, unpickling errors, OSError on truncated files
        raise CheckpointError(f"{path} is corrupt or truncated ({_first_line(exc)}): {fix}") from exc
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
    ):
        raise CheckpointError(f"{path} does not hold a state dict of named tensors: {fix}")
    return dict(data)


def _infos_of_state_dict(state_dict: Mapping[str, torch.Tensor], path: Path) -> dict[str, _TensorInfo]:
    return {k: _TensorInfo(k, tuple(v.shape), v.dtype, v.numel(), path) for k, v in state_dict.items()}


def _disk_dtype(infos: Iterable[_TensorInfo]) -> torch.dtype:
    """The floating dtype that holds most of the parameters (what ``dtype=None`` keeps)."""
    counts: Counter[torch.dtype] = Counter()
    for info in infos:
        if info.dtype is not None and info.dtype.is_floating_point:
            counts[info.dtype] += info.numel
    return counts.most_common(1)[0][0] if counts else torch.float32


# --------------------------------------------------------------------------------------------------
# Validation and streaming into meta-device models
# --------------------------------------------------------------------------------------------------


def _fmt_shape(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _check_tensors(
    model: torch.nn.Module,
    provided: Mapping[str, _TensorInfo],
    *,
    where: str,
    fix: str,
    stored_name: Callable[[str], str] = lambda key: key,
    optional: Iterable[str] = (),
) -> None:
    """Refuse missing, unknown and wrongly shaped tensors, naming the first one (``provided`` is by model key)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    optional = set(optional)
    ignore = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])]
    missing = [k for k in expected if k not in provided and k not in optional]
    if missing:
        try:
            name = stored_name(missing[0])
        except KeyError:
            name = missing[0]
        raise CheckpointError(
            f"{where}: tensor {name} is missing ({len(missing)} of {len(expected)} expected tensors missing): {fix}"
        )
    for key, info in provided.items():
        if key not in expected and not any(p.search(key) for p in ignore):
            raise CheckpointError(f"{where}: unexpected tensor {info.name} in {info.file}: {fix}")
    for key, info in provided.items():
        if key in expected and info.shape != expected[key]:
            raise CheckpointError(
                f"{where}: tensor {info.name} in {info.file} has shape {_fmt_shape(info.shape)}, expected "
                f"{_fmt_shape(expected[key])} from the checkpoint's config: {fix}"
            )


def _diffusers_dtype_rule(model: torch.nn.Module, dtype: torch.dtype) -> Callable[[str], torch.dtype]:
    """Per-tensor dtype as diffusers' ``from_pretrained(torch_dtype=...)``: keep-in-fp32 modules stay fp32."""
    keep = list(getattr(model, "_keep_in_fp32_modules", None) or [])

    def rule(key: str) -> torch.dtype:
        parts = key.split(".")
        return torch.float32 if any(m in parts for m in keep) else dtype

    return rule


def _transformers_dtype_rule(model: torch.nn.Module, dtype: torch.dtype) -> Callable[[str], torch.dtype]:
    """Per-tensor dtype as transformers' ``from_pretrained(dtype=...)``: fp32 islands for fp16 (strict ones: bf16)."""
    keep: list[str] = []
    if dtype == torch.float16:
        keep += list(getattr(model, "_keep_in_fp32_modules", None) or [])
    if dtype in (torch.float16, torch.bfloat16):
        keep += list(getattr(model, "_keep_in_fp32_modules_strict", None) or [])

    def rule(key: str) -> torch.dtype:
        parts = key.split(".")
        return torch.float32 if any(m in parts for m in keep) else dtype

    return rule


def _stream_into(
    model: torch.nn.Module,
    tensors: Iterable[tuple[str, torch.Tensor]],
    dtype_rule: Callable[[str], torch.dtype],
    device: torch.device,
) -> None:
    """Replace the meta parameters of ``model`` tensor by tensor, casting each on the way."""
    for key, tensor in tensors:
        dtype = dtype_rule(key) if tensor.is_floating_point() else tensor.dtype
        set_module_tensor_to_device(model, key, device, value=tensor, dtype=dtype, clear_cache=False)


def _finish(model: torch.nn.Module, where: str, fix: str, device: torch.device) -> None:
    left = next((n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta), None)
    if left is not None:
        raise CheckpointError(f"{where}: tensor {left} was not loaded: {fix}")
    model.to(device)  # non-persistent buffers (RoPE tables) were built on the CPU
    model.eval()


def _build_meta(where: str, fix: str, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    try:
        with init_empty_weights():
            return build()
    except Exception as exc:
        raise CheckpointError(f"{where}: cannot build the model from its config ({_first_line(exc)}): {fix}") from exc


# --------------------------------------------------------------------------------------------------
# Official layout
# --------------------------------------------------------------------------------------------------

_Loader = Callable[[], Any]


def _prepare_official_expert(folder: Path, dtype: torch.dtype | None, device: torch.device) -> _Loader:
    """Validate one official expert folder; return the function that streams it into a model."""
    fix = f"re-download {folder.name}/ from Wan-AI/Wan2.2-T2V-A14B"
    where = f"{folder.name}/"
    _require_dir(folder, fix)
    config_path = folder / "config.json"
    wan_config = _read_json(config_path, fix)
    infos = _read_safetensors(folder, WEIGHTS_STEM, fix)
    renamed: dict[str, _TensorInfo] = {}
    for name, info in infos.items():
        try:
            key = wan_to_diffusers_transformer_key(name)
        except Exception as exc:
            raise CheckpointError(f"{where}: unexpected tensor {name} in {info.file}: {fix}") from exc
        if key in renamed:
            raise CheckpointError(f"{where}: tensors {renamed[key].name} and {name} both map to {key}: {fix}")
        renamed[key] = info
    text_key = "condition_embedder.text_embedder.linear_1.weight"
    text_dim = renamed[text_key].shape[-1] if text_key in renamed and len(renamed[text_key].shape) == 2 else None
    try:
        config = transformer_config_from_wan(wan_config, text_dim=text_dim)
    except (KeyError, ValueError, TypeError) as exc:
        what = f"has no {exc.args[0]!r}" if isinstance(exc, KeyError) else f"is not usable ({_first_line(exc)})"
        raise CheckpointError(f"{config_path} {what}: {fix}") from exc
    model = _build_meta(where, fix, lambda: WanTransformer3DModel(**config))
    _check_tensors(model, renamed, where=where, fix=fix, stored_name=diffusers_to_wan_transformer_key)
    target = dtype or _disk_dtype(infos.values())

    def load() -> WanTransformer3DModel:
        logger.info("loading %s (%s, %d tensors) to %s", folder, str(target).removeprefix("torch."), len(infos), device)
        stored_to_key = {info.name: key for key, info in renamed.items()}
        tensors = ((stored_to_key[n], t) for n, t in _iter_safetensors(infos, list(infos)))
        _stream_into(model, tensors, _diffusers_dtype_rule(model, target), device)
        _finish(model, where, fix, device)
        return model

    return load


def _prepare_official_vae(path: Path, device: torch.device) -> _Loader:
    fix = f"re-download {path.name} from Wan-AI/Wan2.2-T2V-A14B"
    where = path.name
    state_dict = _torch_load(path, fix)
    infos = _infos_of_state_dict(state_dict, path)
    renamed: dict[str, _TensorInfo] = {}
    for name, info in infos.items():
        key = wan_to_diffusers_vae_key(name)
        if key in renamed:
            raise CheckpointError(f"{where}: tensors {renamed[key].name} and {name} both map to {key}: {fix}")
        renamed[key] = info
    for needed in ("encoder.conv1.weight", "conv1.weight"):
        if needed not in infos:
            raise CheckpointError(f"{where}: tensor {needed} is missing: {fix}")
    base_dim, z_dim = infos["encoder.conv1.weight"].shape[0], infos["conv1.weight"].shape[0] // 2
    model = _build_meta(where, fix, lambda: AutoencoderKLWan(base_dim=base_dim, z_dim=z_dim))
    _check_tensors(model, renamed, where=where, fix=fix, stored_name=diffusers_to_wan_vae_key)

    def load() -> AutoencoderKLWan:
        logger.info("loading %s (float32) to %s", path, device)
        stored_to_key = {info.name: key for key, info in renamed.items()}
        tensors = ((stored_to_key[n], t) for n, t in state_dict.items())
        _stream_into(model, tensors, lambda key: torch.float32, device)
        _finish(model, where, fix, device)
        return model

    return load


def _prepare_official_t5(path: Path, dtype: torch.dtype | None, device: torch.device) -> _Loader:
    fix = f"re-download {path.name} from Wan-AI/Wan2.2-T2V-A14B"
    where = path.name
    state_dict = _torch_load(path, fix)
    infos = _infos_of_state_dict(state_dict, path)
    renamed: dict[str, _TensorInfo] = {}
    for name, info in infos.items():
        key = umt5_wan_key_to_hf(name)
        if key is None:
            raise CheckpointError(f"{where}: unexpected tensor {name} in {path}: {fix}")
        renamed[key] = info
    try:
        config = umt5_config_from_state_dict(state_dict)
    except KeyError as exc:
        raise CheckpointError(f"{where}: tensor {exc.args[0]} is missing: {fix}") from exc
    except (ValueError, ZeroDivisionError) as exc:
        raise CheckpointError(
            f"{where}: tensor shapes do not describe a umT5 encoder ({_first_line(exc)}): {fix}"
        ) from exc
    model = _build_meta(where, fix, lambda: UMT5EncoderModel(config))

    def stored_name(key: str) -> str:
        return umt5_hf_key_to_wan(key) or key

    _check_tensors(model, renamed, where=where, fix=fix, stored_name=stored_name, optional=[UMT5_TIED_KEY])
    target = dtype or _disk_dtype(infos.values())

    def load() -> UMT5EncoderModel:
        logger.info("loading %s (%s) to %s", path, str(target).removeprefix("torch."), device)
        tensors = ((renamed_key, state_dict[info.name]) for renamed_key, info in renamed.items())
        _stream_into(model, tensors, _transformers_dtype_rule(model, target), device)
        model.encoder.embed_tokens.weight = model.shared.weight  # tied, as from_pretrained leaves them
        _finish(model, where, fix, device)
        return model

    return load


def _load_tokenizer(folder: Path, fix: str) -> PreTrainedTokenizerBase:
    _require_dir(folder, fix)
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load the tokenizer in {folder} ({_first_line(exc)}): {fix}") from exc


def _load_official(
    root: Path, transformer_dtype: torch.dtype | None, text_encoder_dtype: torch.dtype | None, device: torch.device
) -> WanComponents:
    for name in OFFICIAL_EXPERTS:
        _require_dir(root / name, f"re-download {name}/ from Wan-AI/Wan2.2-T2V-A14B")
    for name in (OFFICIAL_VAE, OFFICIAL_T5):
        _require_file(root / name, f"re-download {name} from Wan-AI/Wan2.2-T2V-A14B")
    tokenizer = _load_tokenizer(
        root / OFFICIAL_TOKENIZER, f"re-download {OFFICIAL_TOKENIZER}/ from Wan-AI/Wan2.2-T2V-A14B"
    )
    # Validate everything before loading anything heavy.
    high = _prepare_official_expert(root / OFFICIAL_EXPERTS[0], transformer_dtype, device)
    low = _prepare_official_expert(root / OFFICIAL_EXPERTS[1], transformer_dtype, device)
    vae = _prepare_official_vae(root / OFFICIAL_VAE, device)
    t5 = _prepare_official_t5(root / OFFICIAL_T5, text_encoder_dtype, device)
    return WanComponents(tokenizer, t5(), vae(), high(), low(), layout="official")


# --------------------------------------------------------------------------------------------------
# Diffusers layout
# --------------------------------------------------------------------------------------------------


def _prepare_diffusers_model(
    folder: Path,
    cls: Any,
    *,
    is_transformers: bool,
    dtype: torch.dtype | None,
    device: torch.device,
) -> _Loader:
    """Validate a diffusers/transformers model folder against its own config; return its loader."""
    fix = f"re-download {folder.name}/ from Wan-AI/Wan2.2-T2V-A14B-Diffusers"
    where = f"{folder.name}/"
    _require_dir(folder, fix)
    config_path = folder / "config.json"
    config_dict = _read_json(config_path, fix)
    stem = TEXT_ENCODER_STEM if is_transformers else WEIGHTS_STEM
    has_safetensors = any((folder / f"{stem}{ext}").is_file() for ext in (".safetensors", ".safetensors.index.json"))
    infos: dict[str, _TensorInfo] = {}
    if has_safetensors or not any(folder.glob("*.bin")):
        infos = _read_safetensors(folder, stem, fix)
        if is_transformers:
            try:
                config = UMT5Config.from_dict(config_dict)
            except Exception as exc:
                raise CheckpointError(f"{config_path} is not a UMT5 config ({_first_line(exc)}): {fix}") from exc
            model = _build_meta(where, fix, lambda: cls(config))
            # A tied pair is stored once, under either name (transformers saves the source only).
            tied = dict(getattr(cls, "_tied_weights_keys", None) or {})
            optional = [b for a, b in [*tied.items(), *((v, k) for k, v in tied.items())] if a in infos]
        else:
            model = _build_meta(where, fix, lambda: cls.from_config(config_dict))
            optional = []
        _check_tensors(model, infos, where=where, fix=fix, optional=optional)
        del model
    else:
        logger.warning("%s has no safetensors weights; loading it without a shape check", folder)
    target = dtype or (_disk_dtype(infos.values()) if infos else None)

    def load() -> Any:
        logger.info("loading %s (%s) to %s", folder, str(target).removeprefix("torch."), device)
        kwargs: dict[str, Any] = {"local_files_only": True}
        kwargs["dtype" if is_transformers else "torch_dtype"] = target
        if device.type != "cpu":
            kwargs["device_map"] = {"": device}
        try:
            model = cls.from_pretrained(str(folder), **kwargs)
        except Exception as exc:
            raise CheckpointError(f"cannot load {folder} ({_first_line(exc)}): {fix}") from exc
        return model.eval()

    return load


def _load_diffusers(
    root: Path, transformer_dtype: torch.dtype | None, text_encoder_dtype: torch.dtype | None, device: torch.device
) -> WanComponents:
    for name in DIFFUSERS_FOLDERS:
        _require_dir(root / name, f"re-download {name}/ from Wan-AI/Wan2.2-T2V-A14B-Diffusers")
    tokenizer = _load_tokenizer(root / "tokenizer", "re-download tokenizer/ from Wan-AI/Wan2.2-T2V-A14B-Diffusers")
    high, low = (
        _prepare_diffusers_model(
            root / name, WanTransformer3DModel, is_transformers=False, dtype=transformer_dtype, device=device
        )
        for name in DIFFUSERS_EXPERTS
    )
    vae = _prepare_diffusers_model(
        root / "vae", AutoencoderKLWan, is_transformers=False, dtype=torch.float32, device=device
    )
    text_encoder = _prepare_diffusers_model(
        root / "text_encoder", UMT5EncoderModel, is_transformers=True, dtype=text_encoder_dtype, device=device
    )
    return WanComponents(tokenizer, text_encoder(), vae(), high(), low(), layout="diffusers")


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------


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
        return _load_official(root, transformer_dtype, text_encoder_dtype, device)
    return _load_diffusers(root, transformer_dtype, text_encoder_dtype, device)
