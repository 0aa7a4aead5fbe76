"""The float8 lever's scopes and its one-line errors (the quantisation itself needs an Ada/Hopper GPU)."""

import pytest
import torch
from tiny_models import tiny_parts

import generate
from wan.errors import ConfigError
from wan.levers import Levers, apply_levers, fp8, parse_levers
from wan.levers.fp8 import fp8_layer_names, quantize_experts_fp8
from wan.levers.presets import resolve_levers


@pytest.fixture(scope="module")
def expert() -> torch.nn.Module:
    return tiny_parts(seed=0).high_noise_model


def test_ffn_scope_is_the_feed_forward_layers_of_every_block(expert):
    every = fp8_layer_names(expert, "all")
    ffn = fp8_layer_names(expert, "ffn")
    blocks = len(expert.blocks)
    assert ffn == [n for n in every if ".ffn." in n] and len(ffn) == 2 * blocks  # up and down projections
    assert all(n.endswith(("ffn.net.0.proj", "ffn.net.2")) for n in ffn)
    assert len(every) > len(ffn) and all(n.startswith("blocks.") for n in every)  # embeddings and head stay


def test_a_bare_fp8_means_every_block_linear_and_a_scope_is_checked():
    assert parse_levers("fp8/compile") == {"fp8": "all", "compile": True}
    assert parse_levers("fp8=ffn") == {"fp8": "ffn"}
    with pytest.raises(ConfigError, match="--fp8 attn: unknown scope; choose one of: all, ffn"):
        parse_levers("fp8=attn")
    with pytest.raises(ConfigError, match="unknown scope"):
        resolve_levers(None, {"fp8": "attn"}, torch.device("cpu"))


def test_cli_scope_flags():
    parse = generate.build_parser().parse_args
    base = ["--prompt", "p"]
    assert parse(base).fp8 is None
    assert parse([*base, "--fp8"]).fp8 == "all"
    assert parse([*base, "--fp8", "ffn"]).fp8 == "ffn"
    assert parse([*base, "--no-fp8"]).fp8 == ""  # set, so it wins over a preset's float8


def test_quantising_off_a_float8_gpu_is_one_line():
    class Pipe:
        device = torch.device("cpu")
        experts: dict = {}

    with pytest.raises(ConfigError, match="^--fp8: float8 needs a GPU .*; run without --fp8$"):
        quantize_experts_fp8(Pipe(), "ffn")


def test_float8_with_a_cache_under_compile_is_refused_before_loading(monkeypatch):
    monkeypatch.setattr(fp8, "fp8_problem", lambda device: None)  # as on a Hopper GPU
    message = "--fp8 with --cache and --compile: .*; add --no-compile or --cache none"
    with pytest.raises(ConfigError, match=message):
        resolve_levers("fast", {"fp8": "ffn", "compile": True}, torch.device("cpu"))  # fast's cache, compile asked
    with pytest.raises(ConfigError, match=message):
        apply_levers(object(), Levers(fp8="ffn", compile=True, cache="sea:0.5:3"))  # refused before touching it
    levers, _ = resolve_levers("fast", {"fp8": "ffn", "compile": False}, torch.device("cpu"))
    assert levers.fp8 == "ffn" and not levers.compile and levers.cache
