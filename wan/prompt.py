"""Prompt text as Wan's pipeline cleans it before the text encoder (and before any check of it)."""

from __future__ import annotations

import html
import re

import ftfy


def clean_prompt(text: str) -> str:
    """Fix mojibake, unescape HTML and squeeze white space, as Wan's text pipeline does before T5."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()
