"""wan.options: the command line's flags resolved once into frozen engine options; the flags are never written."""

from __future__ import annotations

import dataclasses

import pytest

import generate
from wan.errors import ConfigError
from wan.options import placement_choice, resolve_ckpt_dir, resolve_options, with_defaults


def flags(*argv: str) -> dict:
    return vars(generate.build_parser().parse_args(list(argv)))


def test_a_preset_fills_only_what_the_user_left_unset():
    filled = with_defaults(flags("--preset", "fast", "--cfg_truncate_steps", "2"))
    assert filled["cfg_truncate_steps"] == 2  # explicit wins
    assert filled["cfg_truncate_high_noise_steps"] == 3  # the preset's
    assert filled["convert_model_dtype"] is True
    plain = with_defaults(flags())
    assert (plain["cfg_truncate_steps"], plain["convert_model_dtype"]) == (0, False)


def test_resolving_leaves_the_flags_as_typed_and_the_options_frozen():
    typed = flags("--preset", "exact", "--device", "cpu")
    before = dict(typed)
    options = resolve_options(typed)
    assert typed == before
    assert options.preset == "exact" and options.device == "cpu" and options.placement == "auto"
    assert options.config.task == "t2v-tiny" and options.ckpt_dir.name == "t2v-tiny"
    assert options.preset_notes  # the CPU leaves the GPU-only levers out, and says so
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.device = "cuda"  # type: ignore[misc]


def test_placement_follows_the_official_flag_and_refuses_a_contradiction():
    assert placement_choice({"offload_model": True}) == "offload"
    assert placement_choice({"offload_model": False}) == "resident"
    assert placement_choice({}) == "auto"
    with pytest.raises(ConfigError, match="--offload_model True means --placement offload, not stream"):
        placement_choice({"offload_model": True, "placement": "stream"})


def test_a_missing_checkpoint_folder_is_one_line(tmp_path, test_config):
    with pytest.raises(ConfigError, match="does not exist; pass --ckpt_dir"):
        resolve_ckpt_dir({"ckpt_dir": str(tmp_path / "nope")}, test_config)
    no_default = dataclasses.replace(test_config, task="t2v-x", default_ckpt_dir=None)
    with pytest.raises(ConfigError, match="task t2v-x needs --ckpt_dir"):
        resolve_ckpt_dir({}, no_default)
