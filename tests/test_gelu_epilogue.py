"""The GELU-epilogue lever: replaces only plain tanh GELUs, keeps the output and the weights' names."""

import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.activations import GELU
from test_fusion import forward

from wan.errors import ConfigError
from wan.levers import gelu_epilogue
from wan.levers.presets import resolve_levers

CPU = torch.device("cpu")


def test_feed_forward_gelus_are_replaced_and_the_output_stays(parts):
    expert = copy.deepcopy(parts.high_noise_model)
    before, names = forward(expert), set(expert.state_dict())
    assert gelu_epilogue.fuse_expert_gelu(expert) == len(expert.blocks)
    assert gelu_epilogue.fuse_expert_gelu(expert) == 0  # already replaced
    assert isinstance(expert.blocks[0].ffn.net[0], gelu_epilogue.EpilogueGELU)
    assert set(expert.state_dict()) == names  # LoRA files and checkpoints still name the same weights
    assert torch.equal(forward(expert), before)  # off CUDA the op runs diffusers' formula


class WrappedLinear(torch.nn.Linear):
    """Stands for a layer another lever or peft wrapped: its own forward must run."""


@pytest.mark.parametrize(
    "module",
    [GELU(8, 16, approximate="none"), GELU(8, 16, approximate="tanh", bias=False)],
    ids=["erf GELU", "no bias"],
)
def test_other_gelus_are_left_alone(module):
    holder = torch.nn.Sequential(module)
    assert gelu_epilogue.fuse_expert_gelu(holder) == 0 and holder[0] is module


def test_wrapped_projections_are_left_alone():
    module = GELU(8, 16, approximate="tanh")
    module.proj = WrappedLinear(8, 16)
    assert gelu_epilogue.fuse_expert_gelu(torch.nn.Sequential(module)) == 0


def test_the_op_matches_its_fake():
    generator = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(*shape, generator=generator) for shape in ((2, 5, 8), (16, 8), (16,)))
    torch.library.opcheck(gelu_epilogue.linear_gelu, (x, weight, bias))


def test_the_check_wants_the_tanh_form(monkeypatch):
    check = gelu_epilogue._cuda_epilogue_problem.__wrapped__  # the GPU check's logic, run on the CPU
    assert check("cpu") is None
    monkeypatch.setattr(gelu_epilogue, "linear_gelu", lambda x, w, b: F.gelu(F.linear(x, w, b)))
    assert check("cpu").startswith("this GPU's GEMM GELU epilogue is not the tanh form")


def test_a_gpu_without_the_tanh_epilogue_loses_the_lever(monkeypatch):
    monkeypatch.setattr(gelu_epilogue, "gelu_epilogue_problem", lambda device: "not the tanh form")
    levers, notes = resolve_levers("exact", {}, CPU)
    assert not levers.fuse_gelu and "preset exact: fuse_gelu left out (not the tanh form)" in notes
    with pytest.raises(ConfigError, match="^--fuse_gelu: not the tanh form; run without --fuse_gelu$"):
        resolve_levers(None, {"fuse_gelu": True}, CPU)
