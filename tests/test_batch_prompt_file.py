"""Prompt files (wan.batch.prompt_file): read as editors write them; a bad line names its problem."""

from __future__ import annotations

import json

import pytest

from wan.batch.prompt_file import item_flags, read_prompt_file
from wan.errors import ConfigError


@pytest.mark.parametrize(
    ("data", "prompts"),
    [
        (b"a cat\na dog\n", ["a cat", "a dog"]),
        (b"\xef\xbb\xbfa cat\r\na dog\r\n", ["a cat", "a dog"]),  # Notepad: BOM and CRLF
        ("caf\u00e9 \u732b\r\n".encode(), ["caf\u00e9 \u732b"]),
        (b'\xef\xbb\xbf{"prompt": "a cat"}\r\n', ["a cat"]),  # the BOM does not hide the JSON
    ],
)
def test_prompt_files_are_read_as_editors_write_them(tmp_path, data, prompts):
    path = tmp_path / "p.txt"
    path.write_bytes(data)
    assert [item.flags["prompt"] for item in read_prompt_file(path)] == prompts


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("caf\u00e9\n".encode("latin-1"), "is not UTF-8 text \\(byte 0xe9 at offset 3\\); save it as UTF-8"),
        ("a cat\n".encode("utf-16"), "is UTF-16; save it as UTF-8"),
        (b"a cat\x00\n", "holds NUL bytes"),
        (None, "is a folder, not a file"),
    ],
)
def test_unreadable_prompt_files_are_one_error(tmp_path, data, message):
    path = tmp_path / "p.txt"
    if data is None:
        path.mkdir()
    else:
        path.write_bytes(data)
    with pytest.raises(ConfigError, match=message):
        read_prompt_file(path)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"prompt": "x", "colour": "red"}, "unknown key 'colour'"),
        ({"prompt": "x", "frame_num": "5"}, "'frame_num' must be an integer"),
        ({"prompt": "x", "sample_steps": True}, "'sample_steps' must be an integer"),
        ({"prompt": "x", "enable_half_frame_generation": 1}, "must be true or false"),
        ({"prompt": "x", "seed": 1, "base_seed": 2}, "both set the seed"),
        ({"prompt": "x", "lora": ["a", 1]}, r"'lora' must be \"FILE\[:SCALE\]\" or a list of them"),
        ({"prompt": "x", "lora_low": 0.5}, "'lora_low' must be"),
    ],
)
def test_invalid_items_name_the_key(item, message):
    with pytest.raises(ConfigError, match=message):
        item_flags(item)


def test_an_items_image_is_read_from_the_prompt_files_folder(tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    prompts = folder / "prompts.jsonl"
    absolute = tmp_path / "b.png"
    lines = [{"prompt": "x", "image": "frames/a.png"}, {"prompt": "y", "image": str(absolute)}, {"prompt": "z"}]
    prompts.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    items = read_prompt_file(prompts)
    assert [item.flags.get("image") for item in items] == [str(folder / "frames" / "a.png"), str(absolute), None]
