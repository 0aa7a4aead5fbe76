"""Checkpoint files: existence, JSON configs, safetensors headers and shards, torch.save'd state dicts.

Every reader turns a missing, unreadable or truncated file into one :class:`CheckpointError` line that
names the file and the fix. Headers are read without the tensors, so a whole checkpoint is checked in
seconds before anything heavy loads.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from wan.errors import CheckpointError

logger = logging.getLogger(__name__)


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
class TensorInfo:
    """Where one stored tensor is, its name in that file, and what the header says about it."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype | None
    numel: int
    file: Path


def first_line(exc: BaseException) -> str:
    """The gist of a library error: its first line, first sentence, at most 200 characters."""
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    return text.split(". ")[0][:200]


def require_dir(path: Path, fix: str) -> None:
    if not path.is_dir():
        raise CheckpointError(f"missing folder {path}: {fix}")


def require_file(path: Path, fix: str) -> None:
    if not path.is_file():
        raise CheckpointError(f"missing file {path}: {fix}")


def read_json(path: Path, fix: str) -> dict[str, Any]:
    require_file(path, fix)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({first_line(exc)}): {fix}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object: {fix}")
    return data


def safetensors_header(path: Path, fix: str) -> dict[str, TensorInfo]:
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
                infos[name] = TensorInfo(name, shape, _SAFETENSORS_DTYPES.get(sl.get_dtype()), numel, path)
            return infos
    except Exception as exc:  # safetensors raises its own error type, OSError, or others
        raise CheckpointError(f"{path} is corrupt or truncated ({first_line(exc)}): {fix}") from exc


def has_safetensors(folder: Path, stem: str) -> bool:
    """Whether ``folder`` holds ``stem.safetensors`` or a shard index for it."""
    return any((folder / f"{stem}{ext}").is_file() for ext in (".safetensors", ".safetensors.index.json"))


def read_safetensors(folder: Path, stem: str, fix: str) -> dict[str, TensorInfo]:
    """Headers of ``stem.safetensors``, or of every shard listed by ``stem.safetensors.index.json``."""
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    weight_map: dict[str, str] | None = None
    if index.is_file():
        weight_map = read_json(index, fix).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map: {fix}")
        files = [folder / name for name in sorted(set(weight_map.values()))]
    elif single.is_file():
        files = [single]
    else:
        raise CheckpointError(f"missing file {index} (or the unsharded {single.name}): {fix}")
    for file in files:
        require_file(file, fix)
    infos: dict[str, TensorInfo] = {}
    for file in files:
        infos.update(safetensors_header(file, fix))
    if weight_map is not None:
        for name, shard in weight_map.items():
            if name not in infos or infos[name].file.name != shard:
                raise CheckpointError(f"{index} lists tensor {name} in {shard}, which does not hold it: {fix}")
    return infos


def iter_safetensors(infos: Mapping[str, TensorInfo], names: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield the tensors ``names`` one at a time, opening each file once (in file order)."""
    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(infos[name].file, []).append(name)
    for file, file_names in by_file.items():
        logger.debug("reading %s (%d tensors)", file, len(file_names))
        with safe_open(str(file), framework="pt") as f:
            for name in file_names:
                yield name, f.get_tensor(name)


def torch_load(path: Path, fix: str) -> dict[str, torch.Tensor]:
    """A torch.save'd state dict, memory-mapped (tensors are read on first use)."""
    require_file(path, fix)
    try:
        data = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # zip errors, unpickling errors, OSError on truncated files
        raise CheckpointError(f"{path} is corrupt or truncated ({first_line(exc)}): {fix}") from exc
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
    ):
        raise CheckpointError(f"{path} does not hold a state dict of named tensors: {fix}")
    return dict(data)


def infos_of_state_dict(state_dict: Mapping[str, torch.Tensor], path: Path) -> dict[str, TensorInfo]:
    return {k: TensorInfo(k, tuple(v.shape), v.dtype, v.numel(), path) for k, v in state_dict.items()}


def disk_dtype(infos: Iterable[TensorInfo]) -> torch.dtype:
    """The floating dtype that holds most of the parameters (what ``dtype=None`` keeps)."""
    counts: Counter[torch.dtype] = Counter()
    for info in infos:
        if info.dtype is not None and info.dtype.is_floating_point:
            counts[info.dtype] += info.numel
    return counts.most_common(1)[0][0] if counts else torch.float32
