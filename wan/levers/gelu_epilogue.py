"""GELU-epilogue lever: the feed-forward's first linear layer and its GELU as one cuBLASLt GEMM.

Compiled, each block's FFN runs its 5120 -> 13824 GEMM (bias in the epilogue), writes the bf16
result, and a Triton kernel reads it back for the tanh GELU: 0.64 ms a block at A14B's 480p shapes,
25 ms a forward. ``torch._addmm_activation(..., use_gelu=True)`` asks cuBLASLt for its GELU-bias
epilogue instead (the same GEMM, 3 ms slower in all): the forward is 0.7% faster. The GELU is
applied to the fp32 accumulator before the one rounding to bf16: 0.166% from an fp32 computation
against the unfused pair's 0.242% (``docs/results/probe_fused_kernels_h200.json``). cuBLASLt's
GELU is the tanh form Wan uses, but PyTorch's CPU path for the same op computes the erf form, so
before the lever is installed one float32 call on the GPU must match the tanh form (where the two
differ by up to 5e-4) or the lever is refused. Wrapped in a custom op so regional compilation keeps
it one call: traced, inductor splits it back into GEMM + Triton GELU.

Each diffusers ``GELU`` module whose projection is a plain ``nn.Linear`` (float8 or LoRA-wrapped
layers keep their own forward) is replaced by an ``EpilogueGELU`` holding the same projection, so
the weights' names do not change. A module of one class in every block, not a hook per module:
regional compilation reuses one block's code only where nothing differs between the blocks (a hook
object per module made dynamo recompile for each block). Off CUDA the op runs diffusers' formula.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from diffusers.models.activations import GELU

from wan.errors import ConfigError

logger = logging.getLogger(__name__)


@torch.library.custom_op("wan::linear_gelu", mutates_args=())
def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``gelu(x @ weight.T + bias, approximate="tanh")``: one cuBLASLt GEMM with a GELU epilogue on CUDA."""
    if not x.is_cuda:
        return F.gelu(F.linear(x, weight, bias), approximate="tanh")
    rows = x.reshape(-1, x.shape[-1])
    return torch._addmm_activation(bias, rows, weight.t(), use_gelu=True).view(*x.shape[:-1], weight.shape[0])


@linear_gelu.register_fake
def _(x, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def gelu_epilogue_problem(device: torch.device) -> str | None:
    """None if ``linear_gelu`` computes Wan's tanh GELU on ``device``, else why not (one line)."""
    return _cuda_epilogue_problem(str(device)) if device.type == "cuda" else None


@functools.cache
def _cuda_epilogue_problem(device: str) -> str | None:
    generator = torch.Generator(device).manual_seed(0)
    x, weight = (torch.randn(n, 256, device=device, generator=generator) / 4 for n in (64, 512))
    bias = torch.randn(512, device=device, generator=generator)
    pre = F.linear(x.double(), weight.double(), bias.double())
    error = {
        form: float((linear_gelu(x, weight, bias).double() - F.gelu(pre, approximate=form)).abs().max())
        for form in ("tanh", "none")
    }
    if error["tanh"] < 1e-4 and error["tanh"] < error["none"]:
        return None
    return f"this GPU's GEMM GELU epilogue is not the tanh form (max error {error['tanh']:.1e})"


class EpilogueGELU(torch.nn.Module):
    """A ``GELU`` module's projection and GELU as one ``linear_gelu``."""

    def __init__(self, proj: torch.nn.Linear):
        super().__init__()
        self.proj = proj

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return linear_gelu(hidden_states, self.proj.weight, self.proj.bias)


def _takes(module: torch.nn.Module) -> bool:
    """A tanh ``GELU`` whose projection is a plain linear layer with a bias and plain (not float8) weights."""
    proj = getattr(module, "proj", None)
    return (
        isinstance(module, GELU)
        and module.approximate == "tanh"
        and type(proj) is torch.nn.Linear
        and proj.bias is not None
        and type(proj.weight.data) is torch.Tensor
    )


def fuse_expert_gelu(expert: torch.nn.Module) -> int:
    """Replace every eligible ``GELU`` of ``expert`` by an ``EpilogueGELU``; returns how many."""
    replaced = 0
    for parent in list(expert.modules()):
        for name, child in list(parent.named_children()):
            if _takes(child):
                setattr(parent, name, EpilogueGELU(child.proj))
                replaced += 1
    return replaced


def fuse_gelu_epilogue(pipe) -> None:
    """The GELU epilogue in both experts' feed-forward layers."""
    if problem := gelu_epilogue_problem(pipe.device):
        raise ConfigError(f"--fuse_gelu: {problem}; run without --fuse_gelu")
    for name, expert in pipe.experts.items():
        count = fuse_expert_gelu(expert)
        logger.info("GELU in the GEMM epilogue of %d feed-forward layers of the %s expert", count, name)
