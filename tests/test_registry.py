"""The lever registry: settings, flags, mode names, checks and presets all follow the one ordered list."""

import argparse
import pickle
import re
from dataclasses import FrozenInstanceError, fields

import pytest
import torch

import generate
from wan.errors import ConfigError
from wan.levers import REGISTRY, Levers, apply_levers, explicit_levers, parse_levers
from wan.levers.lever import Lever
from wan.levers.presets import PRESETS, Preset, add_lever_flags, resolve_levers

CPU = torch.device("cpu")


class Dither(Lever):
    """A throwaway lever, as a new one would be written: a value from a short list, a hardware limit, an install."""

    name = "dither"
    choices = ("fine", "coarse")
    help = "dither the latents"

    def problem(self, device, parallel):
        return "one GPU only" if parallel else None

    def apply(self, pipe):
        pipe.installed.append((self.name, self.value))


class Pipe:
    """Records what the levers install; it has no experts, so only a lever that touches none may be on."""

    def __init__(self):
        self.installed = []


@pytest.fixture
def registry():
    return REGISTRY.with_lever(Dither, after="cache")


def test_a_new_lever_gets_its_field_flag_mode_name_and_checks(registry):
    settings = registry.settings
    assert [f.name for f in fields(settings)] == [*REGISTRY.names[:6], "dither", *REGISTRY.names[6:]]
    assert settings().dither is None and settings(dither="fine").as_dict()["dither"] == "fine"
    assert "dither" not in {f.name for f in fields(Levers)}  # the copy, not the project's registry

    parser = argparse.ArgumentParser()
    add_lever_flags(parser, registry)
    assert parser.parse_args([]).dither is None
    assert registry.explicit(vars(parser.parse_args(["--dither", "coarse"])))["dither"] == "coarse"

    assert registry.parse_mode("dither=fine/compile") == {"dither": "fine", "compile": True}
    with pytest.raises(ConfigError, match=re.escape("unknown --dither 'rough'; choose one of: fine, coarse")):
        registry.parse_mode("dither=rough")
    with pytest.raises(ConfigError, match="^a mode's dither takes a value: dither=VALUE$"):
        registry.parse_mode("dither")


def test_a_new_lever_is_resolved_against_presets_and_the_hardware(registry):
    presets = {"smooth": Preset("dithered", registry.settings(dither="fine", fuse_projections=True))}
    levers, notes = resolve_levers("smooth", {}, CPU, registry=registry, presets=presets)
    assert levers == registry.settings(dither="fine", fuse_projections=True) and notes == []
    levers, notes = resolve_levers("smooth", {}, CPU, parallel=True, registry=registry, presets=presets)
    assert levers.dither is None and notes == ["preset smooth: dither left out (one GPU only)"]
    assert resolve_levers("smooth", {"dither": "coarse"}, CPU, registry=registry, presets=presets)[0].dither == "coarse"
    with pytest.raises(ConfigError, match="^--dither: one GPU only; run without --dither$"):
        resolve_levers(None, {"dither": "fine"}, CPU, parallel=True, registry=registry, presets=presets)


def test_a_new_lever_is_installed_in_its_place(registry):
    chosen = registry.chosen({"vae_dtype": "bfloat16", "dither": "fine", "fp8": "ffn", "compile": True})
    assert [type(lever).__name__ for lever in chosen] == ["Fp8", "Dither", "Compile", "VaeDtype"]
    pipe = Pipe()
    registry.apply(pipe, registry.settings(dither="coarse"))
    assert pipe.installed == [("dither", "coarse")]


def test_the_command_lines_levers_by_name():
    parse = generate.build_parser().parse_args
    unset = explicit_levers(vars(parse(["--prompt", "p"])))
    assert unset == dict.fromkeys(REGISTRY.names)  # every lever, None: the preset or the default decides
    asked = explicit_levers(vars(parse(["--prompt", "p", "--cache", "None", "--no-compile", "--fp8", "--fuse_gelu"])))
    assert {k: v for k, v in asked.items() if v is not None} == {
        "cache": "",  # "none": set but off, so it wins over a preset's cache
        "compile": False,
        "fp8": "all",
        "fuse_gelu": True,
    }
    assert resolve_levers("fast", {**asked, "fp8": None}, CPU)[0].cache == ""


def test_the_settings_are_frozen_hashable_and_picklable_in_installation_order():
    levers = Levers(fp8="ffn", compile=True)
    assert list(levers.as_dict()) == list(REGISTRY.names)
    assert pickle.loads(pickle.dumps(levers)) == levers  # batch and Ray workers receive them
    assert {levers: 1}[Levers(compile=True, fp8="ffn")] == 1
    with pytest.raises(FrozenInstanceError):
        levers.compile = False


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("compile=1", "compile is on or off and takes no value; got '1'"),
        ("cache", "a mode's cache takes a value: cache=VALUE"),
        ("turbo", "unknown lever 'turbo' in a mode; levers: attention_backend, cache, compile"),
    ],
)
def test_bad_mode_names_are_one_line(mode, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_levers(mode)


def test_values_are_checked_before_anything_is_installed():
    assert parse_levers("cache=none/fuse_projections") == {"cache": "", "fuse_projections": True}
    pipe = Pipe()
    with pytest.raises(ConfigError, match=re.escape("unknown --vae_dtype 'float16'; choose one of: float32, bfloat16")):
        apply_levers(pipe, Levers(fuse_projections=True, vae_dtype="float16"))
    assert pipe.installed == []
    with pytest.raises(ConfigError, match="^unknown --attention_backend 'warp'; choose one of: "):
        resolve_levers(None, {"attention_backend": "warp"}, CPU)  # before any model loads


def test_presets_name_levers_and_flags_that_exist():
    dests = {action.dest for action in generate.build_parser()._actions}
    for preset in PRESETS.values():
        assert isinstance(preset.levers, Levers)
        assert set(preset.prefer) <= set(REGISTRY.names)
        assert set(preset.generation) | set(preset.load) <= dests  # filled into generate.py's flags by name
