"""Stored tensors -> models built on the meta device: rename, check against the model, stream in.

A model is built with empty weights from its config, every stored tensor is matched to it by name and
shape (one line names the first wrong one), and only then are tensors read, one at a time, each cast
to its final dtype on the way, so no second full copy of a 14B expert is ever held.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from accelerate.utils import set_module_tensor_to_device
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from wan.checkpoints.files import TensorInfo, first_line, require_dir
from wan.errors import CheckpointError

Loader = Callable[[], Any]
"""Loads one validated part; returned by a ``prepare_*`` function once every check has passed."""


def rename_tensors(
    infos: Mapping[str, TensorInfo], rename: Callable[[str], str | None], *, where: str, fix: str
) -> dict[str, TensorInfo]:
    """Stored tensors by model name; refuses a name ``rename`` does not know (None or KeyError) and collisions."""
    renamed: dict[str, TensorInfo] = {}
    for name, info in infos.items():
        try:
            key = rename(name)
        except KeyError:
            key = None
        if key is None:
            raise CheckpointError(f"{where}: unexpected tensor {name} in {info.file}: {fix}")
        if key in renamed:
            raise CheckpointError(f"{where}: tensors {renamed[key].name} and {name} both map to {key}: {fix}")
        renamed[key] = info
    return renamed


def build_meta(where: str, fix: str, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """The model with empty (meta) weights; a config the class refuses becomes one line."""
    try:
        with init_empty_weights():
            return build()
    except Exception as exc:
        raise CheckpointError(f"{where}: cannot build the model from its config ({first_line(exc)}): {fix}") from exc


def _fmt_shape(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def check_tensors(
    model: torch.nn.Module,
    provided: Mapping[str, TensorInfo],
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


def _keep_fp32_rule(keep: list[str], dtype: torch.dtype) -> Callable[[str], torch.dtype]:
    def rule(key: str) -> torch.dtype:
        parts = key.split(".")
        return torch.float32 if any(m in parts for m in keep) else dtype

    return rule


def diffusers_dtype_rule(model: torch.nn.Module, dtype: torch.dtype) -> Callable[[str], torch.dtype]:
    """Per-tensor dtype as diffusers' ``from_pretrained(torch_dtype=...)``: keep-in-fp32 modules stay fp32."""
    return _keep_fp32_rule(list(getattr(model, "_keep_in_fp32_modules", None) or []), dtype)


def transformers_dtype_rule(model: torch.nn.Module, dtype: torch.dtype) -> Callable[[str], torch.dtype]:
    """Per-tensor dtype as transformers' ``from_pretrained(dtype=...)``: fp32 islands for fp16 (strict ones: bf16)."""
    keep: list[str] = []
    if dtype == torch.float16:
        keep += list(getattr(model, "_keep_in_fp32_modules", None) or [])
    if dtype in (torch.float16, torch.bfloat16):
        keep += list(getattr(model, "_keep_in_fp32_modules_strict", None) or [])
    return _keep_fp32_rule(keep, dtype)


def stream_into(
    model: torch.nn.Module,
    tensors: Iterable[tuple[str, torch.Tensor]],
    dtype_rule: Callable[[str], torch.dtype],
    device: torch.device,
) -> None:
    """Replace the meta parameters of ``model`` tensor by tensor, casting each on the way.

    A tensor that would stay where it is (CPU, same dtype) is copied, as ``own_memory`` explains.
    """
    for key, tensor in tensors:
        dtype = dtype_rule(key) if tensor.is_floating_point() else tensor.dtype
        if device.type == "cpu" and tensor.dtype == dtype:
            tensor = tensor.clone()
        set_module_tensor_to_device(model, key, device, value=tensor, dtype=dtype, clear_cache=False)


def own_memory(model: torch.nn.Module) -> None:
    """Copy CPU tensors into memory of their own (64-byte aligned) instead of views into a memory-mapped file.

    A tensor read without a cast stays a view of the file at the file's offset (safetensors aligns to
    8 bytes), and CPU kernels round differently on differently aligned memory: the same weights would
    give outputs that differ in the last bits with the layout they came from. Ties survive (a shared
    parameter is one object).
    """
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.device.type == "cpu":
            tensor.data = tensor.data.clone()


def finish(model: torch.nn.Module, where: str, fix: str, device: torch.device) -> None:
    """Refuse a model with a tensor left on the meta device; move built-in buffers; eval mode."""
    left = next((n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta), None)
    if left is not None:
        raise CheckpointError(f"{where}: tensor {left} was not loaded: {fix}")
    model.to(device)  # non-persistent buffers (RoPE tables) were built on the CPU
    model.eval()


def load_tokenizer(folder: Path, fix: str) -> PreTrainedTokenizerBase:
    """A tokenizer folder, offline; an unreadable one becomes one line."""
    require_dir(folder, fix)
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load the tokenizer in {folder} ({first_line(exc)}): {fix}") from exc
