"""Prompt files: a plain line is a prompt, a JSON line an item with its own generation flags.

Items are named by the same flags as the command line (``generate.py``), which fills in any flag an
item leaves out. A line that cannot be read becomes an item with an error: it is recorded as failed
and the batch goes on; only a file that cannot be read at all stops the batch before it starts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wan.errors import ConfigError
from wan.lora import FLAG_EXPERTS

ITEM_FLAGS: dict[str, tuple[type, ...]] = {
    "prompt": (str,),
    "negative_prompt": (str,),
    "base_seed": (int,),
    "size": (str,),
    "frame_num": (int,),
    "sample_steps": (int,),
    "sample_shift": (int, float),
    "sample_solver": (str,),
    "sample_guide_scale": (int, float),
    "enable_half_frame_generation": (bool,),
    "half_frame_steps": (str,),
    "half_frame_positions": (str,),
    "frame_completion": (str,),
    "enable_improved_frame_completion": (bool,),
    "cfg_truncate_steps": (int,),
    "cfg_truncate_high_noise_steps": (int,),
    "lora": (str, list),
    "lora_high": (str, list),
    "lora_low": (str, list),
    "lora_dir": (str,),
    "image": (str,),
    "save_file": (str,),
}
"""Keys a JSONL item may set: the generation flags by their CLI names, with the JSON types they take."""
ITEM_ALIASES = {"seed": "base_seed"}
_KINDS = {
    (str,): "a string",
    (int,): "an integer",
    (int, float): "a number",
    (bool,): "true or false",
    (str, list): '"FILE[:SCALE]" or a list of them',
}
GENERATION_FLAGS = tuple(name for name in ITEM_FLAGS if name != "save_file")
RELATIVE_TO_FILE = ("image",)
"""Item keys whose relative paths are read from the prompt file's folder, so a folder of prompts and
images moves as one."""
"""The CLI flags (argparse dests) that decide a video; items default to the command line's values."""


@dataclass
class BatchItem:
    """One line of a prompt file: the flags it sets, or why it cannot be run."""

    index: int  # position among the file's items (blank and # lines do not count)
    line: int  # line number in the file, for messages
    item_id: str  # "<index>_<prompt slug>": stable across re-runs, the default output name
    flags: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def slugify(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text)[:limit].strip("_") or "video"


def read_prompt_file(path: Path) -> list[BatchItem]:
    """Items of a prompt file: a plain line is a prompt, a line starting with ``{`` a JSON item.

    A malformed or invalid line becomes an item with an error (recorded as failed, the batch goes
    on); a file that cannot be read or has no items is a batch-level ``ConfigError``.
    """
    text = read_text_file(path)
    items: list[BatchItem] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            items.append(parse_item(len(items), number, line))
    for item in items:
        for key in RELATIVE_TO_FILE:
            if item.flags.get(key):
                item.flags[key] = str(path.parent / item.flags[key])  # an absolute path stays as it is
    if not items:
        raise ConfigError(f"prompt file {path} has no prompts (one per line, or JSON objects)")
    return items


def read_text_file(path: Path) -> str:
    """A text file as editors write it: UTF-8 with or without a byte-order mark, any line ends; else one error."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"prompt file {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"prompt file {path} is a folder, not a file") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read prompt file {path}: {exc.strerror or exc}") from exc
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"prompt file {path} is UTF-16; save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"prompt file {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8"
        ) from exc
    if "\x00" in text:
        raise ConfigError(f"prompt file {path} holds NUL bytes: not a text file")
    return text


def parse_item(index: int, number: int, line: str) -> BatchItem:
    if not line.startswith("{"):
        return BatchItem(index, number, f"{index:04d}_{slugify(line)}", {"prompt": line})
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        return BatchItem(index, number, f"{index:04d}_invalid", error=f"not valid JSON ({exc.msg}, column {exc.colno})")
    prompt = data.get("prompt")
    item = BatchItem(index, number, f"{index:04d}_{slugify(prompt if isinstance(prompt, str) else '')}")
    try:
        item.flags = item_flags(data)
    except ConfigError as exc:
        item.error = str(exc)
    return item


def item_flags(data: Mapping[str, Any]) -> dict[str, Any]:
    """Check a JSON item's keys and value types (``wan.validation`` checks the values); ``null`` means
    "the command line's value"."""
    flags: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for key, value in data.items():
        name = ITEM_ALIASES.get(key, key)
        if name not in ITEM_FLAGS:
            raise ConfigError(f"unknown key {key!r}; items take: seed, {', '.join(ITEM_FLAGS)}")
        if name in seen:
            raise ConfigError(f"{key!r} and {seen[name]!r} both set the seed; keep one")
        seen[name] = key
        if value is None:
            continue
        types = ITEM_FLAGS[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ConfigError(f"{key!r} must be {_KINDS[types]}, got {json.dumps(value)}")
        if name in FLAG_EXPERTS:  # a LoRA flag: one string or a list, as repeated flags give
            value = [value] if isinstance(value, str) else value
            if not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{key!r} must be {_KINDS[types]}, got {json.dumps(value)}")
        flags[name] = value
    return flags
