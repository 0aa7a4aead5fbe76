"""The speed levers, one class each, and ``REGISTRY``: the order in which they are installed.

The order matters: the attention backend first; fused projections, then the fused q/k norm + RoPE
(which keeps the backend); float8 weights (of the fused layers), then the GELU epilogue (on the layers
float8 left plain); step caching, then compilation, so it traces what the others built; the VAE's
precision, apart from the experts. Each class imports its implementation module only when it is used.

Adding a lever: write its class here (``wan.levers.lever.Lever`` or ``Switch``) and put it in
``REGISTRY``; its setting, flag, mode name, checks and preset handling follow. A preset takes it once
its value is added to ``wan.levers.presets``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from wan.errors import ConfigError
from wan.levers.lever import Lever, Registry, Switch

if TYPE_CHECKING:
    import torch


class AttentionBackend(Lever):
    """diffusers' attention dispatcher, or a kernel from an installed package (``wan.levers.attention``)."""

    name = "attention_backend"
    help = (
        "a diffusers attention backend (e.g. _native_cudnn), flash_4 or flash_3; default: flash_4 where flash-attn-4 "
        "is installed on a Hopper or newer GPU, else flash_3 where flash_attn_3 is installed on a Hopper GPU (one "
        "GPU), else PyTorch's SDPA"
    )

    @classmethod
    def parse(cls, value: Any) -> str:
        from wan.levers.attention import check_backend_name

        check_backend_name(super().parse(value))
        return value

    @classmethod
    def machine_default(cls, device: torch.device, parallel: bool) -> str | None:
        from wan.levers.attention import default_attention_backend

        return default_attention_backend(device, parallel)

    @property
    def label(self) -> str:
        return f"attention {self.value}"

    def problem(self, device: torch.device, parallel: bool) -> str | None:
        from wan.levers.attention import local_kernel_problem

        return local_kernel_problem(self.value, device, parallel)

    def refusal(self, why: str) -> str:
        return f"--attention_backend {self.value}: {why}; run without it"

    def apply(self, pipe: Any) -> None:
        from wan.levers.attention import set_attention_backend

        set_attention_backend(pipe, self.value)


class FuseProjections(Switch):
    """One GEMM per attention's q/k/v (``wan.levers.fusion``)."""

    name = "fuse_projections"
    help = "one GEMM for each attention's q/k/v (self) and k/v (cross) projections"

    def apply(self, pipe: Any) -> None:
        from wan.levers.fusion import fuse_projections

        fuse_projections(pipe)


class FuseNormRope(Switch):
    """q/k RMS norm + RoPE in one kernel (``wan.levers.qk_norm_rope``)."""

    name = "fuse_norm_rope"
    help = "self-attention's q/k RMS norm and RoPE in one Triton kernel (a GPU; elsewhere the same math unfused)"
    gpu_only = True

    def apply(self, pipe: Any) -> None:
        from wan.levers.qk_norm_rope import fuse_norm_rope

        fuse_norm_rope(pipe)


class Fp8(Lever):
    """float8 e4m3 linear layers in the experts' blocks: ``all`` of them or the ``ffn`` ones (``wan.levers.fp8``)."""

    name = "fp8"
    choices = ("all", "ffn")
    help = (
        "float8 linear layers in the experts (torchao, row-wise scales; GPUs of compute capability 8.9+): "
        "all (the default scope) or ffn (the feed-forward layers only)"
    )

    @classmethod
    def add_flags(cls, group: argparse._ActionsContainer) -> None:
        group.add_argument("--fp8", nargs="?", const="all", default=None, metavar="SCOPE", help=cls.help)
        group.add_argument("--no-fp8", dest="fp8", action="store_const", const="", help="no float8, even in a preset")

    @classmethod
    def parse(cls, value: Any) -> str:
        scope = "all" if value is True else value  # a bare fp8, as a bare --fp8
        if scope not in cls.choices:
            raise ConfigError(f"--fp8 {scope}: unknown scope; choose one of: {', '.join(cls.choices)}")
        return scope

    def problem(self, device: torch.device, parallel: bool) -> str | None:
        from wan.levers.fp8 import fp8_problem

        return fp8_problem(device)

    def conflict(self, levers: Any) -> str | None:
        # Measured on an H200 (torch 2.11, torchao 0.17): InternalTorchDynamoError in torchao's
        # __torch_function__; float8 + compile and float8 + cache each run (docs/PERFORMANCE.md).
        if levers.compile and levers.cache:
            return (
                "--fp8 with --cache and --compile: torch.compile fails on torchao's float8 weights when a cache "
                "splits the graph; add --no-compile or --cache none"
            )
        return None

    def apply(self, pipe: Any) -> None:
        from wan.levers.fp8 import quantize_experts_fp8

        quantize_experts_fp8(pipe, self.value)


class FuseGelu(Switch):
    """The FFN's GELU in its GEMM's epilogue (``wan.levers.gelu_epilogue``)."""

    name = "fuse_gelu"
    help = "the feed-forward GELU in its GEMM's cuBLASLt epilogue (a GPU; elsewhere the same math unfused)"
    gpu_only = True

    def problem(self, device: torch.device, parallel: bool) -> str | None:
        from wan.levers.gelu_epilogue import gelu_epilogue_problem

        return gelu_epilogue_problem(device)

    def apply(self, pipe: Any) -> None:
        from wan.levers.gelu_epilogue import fuse_gelu_epilogue

        fuse_gelu_epilogue(pipe)


class Cache(Lever):
    """Step caching through diffusers' cache hooks, e.g. ``sea:0.5:3+5`` (``wan.levers.cache``)."""

    name = "cache"
    help = (
        "step caching: sea[:THRESHOLD[:RUN]], fbc[:THRESHOLD] or taylorseer[:INTERVAL[:ORDER]], a knob (and "
        "sea's run) per expert as HIGH+LOW (taylorseer:3+4:2), or none; without a knob, the checkpoint's calibration "
        "(scripts/calibrate_cache.py) or the default"
    )

    @classmethod
    def from_flag(cls, value: str | None) -> str | None:
        return "" if value is not None and value.lower() == "none" else value  # set but off: wins over a preset's

    @classmethod
    def parse(cls, value: Any) -> str:
        if super().parse(value).lower() == "none":
            return ""
        from wan.levers.cache import parse_cache_spec

        parse_cache_spec(value)
        return value

    def apply(self, pipe: Any) -> None:
        from wan.levers.cache import enable_cache

        enable_cache(pipe, self.value)


class Compile(Switch):
    """Regional torch.compile of the blocks (``wan.levers.compile``), after every lever that changes them."""

    name = "compile"
    help = "regional torch.compile of the blocks"
    gpu_only = True

    def apply(self, pipe: Any) -> None:
        from wan.levers.compile import compile_experts

        compile_experts(pipe)


class VaeDtype(Lever):
    """The VAE's dtype for the decode; None keeps it as loaded (``wan.levers.vae_precision``)."""

    name = "vae_dtype"
    choices = ("float32", "bfloat16")
    help = (
        f"the VAE's precision for the decode: {' or '.join(choices)} (the released float32 by default; "
        "--preset fast and lightning: bfloat16)"
    )

    def apply(self, pipe: Any) -> None:
        from wan.levers.vae_precision import cast_vae

        cast_vae(pipe, self.value)


class VaeKernels(Switch):
    """Channels-last convolutions and compiled norms in the VAE (``wan.levers.vae_compile``), after its dtype."""

    name = "vae_kernels"
    help = "the VAE's convolutions channels-last and its RMS norms compiled (a third off the encode and decode)"
    gpu_only = True

    def apply(self, pipe: Any) -> None:
        from wan.levers.vae_compile import speed_up_vae

        speed_up_vae(pipe)


REGISTRY = Registry(
    (AttentionBackend, FuseProjections, FuseNormRope, Fp8, FuseGelu, Cache, Compile, VaeDtype, VaeKernels),
    module=__name__,
)
Levers = REGISTRY.settings
