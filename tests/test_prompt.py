"""Prompt cleaning: what the text encoder and the checks see."""

from wan.prompt import clean_prompt


def test_clean_prompt():
    assert clean_prompt("  a  red&amp;blue\n square ") == "a red&blue square"
