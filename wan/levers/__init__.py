"""Speed levers: each a small module that wraps the loaded pipeline from outside the denoising loop.

``Levers`` says which are on; ``apply_levers`` installs them in a fixed order (attention backend,
fused projections, the fused q/k norm + RoPE (keeping the backend), float8 weights (of the fused
layers), the GELU epilogue (on the layers float8 left plain), step caching, compilation last so it
traces what the others built; the VAE's precision, apart from the experts). The loop in
``wan.text2video`` never asks which lever is on. Placement (``wan.placement``) is chosen separately,
since it depends on memory rather than on speed/quality trade-offs.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields

from wan.errors import ConfigError
from wan.levers.attention import set_attention_backend
from wan.levers.cache import enable_cache, parse_cache_spec
from wan.levers.compile import compile_experts
from wan.levers.fp8 import check_fp8_scope, quantize_experts_fp8
from wan.levers.fusion import fuse_projections
from wan.levers.gelu_epilogue import fuse_gelu_epilogue
from wan.levers.qk_norm_rope import fuse_norm_rope
from wan.levers.vae_precision import cast_vae, check_vae_dtype

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Levers:
    """Which speed levers a run uses; recorded in the sidecar."""

    attention_backend: str | None = None  # a diffusers attention backend name; None: diffusers' default
    fuse_projections: bool = False  # one GEMM per attention's q/k/v (wan.levers.fusion)
    fuse_norm_rope: bool = False  # q/k RMS norm + RoPE in one kernel (wan.levers.qk_norm_rope)
    fuse_gelu: bool = False  # the FFN's GELU in its GEMM's epilogue (wan.levers.gelu_epilogue)
    fp8: str | None = None  # float8 e4m3 linear layers in the experts' blocks: "all" or "ffn" (wan.levers.fp8)
    cache: str | None = None  # step caching spec, e.g. "fbc:0.05" (wan.levers.cache)
    compile: bool = False  # regional torch.compile of the transformer blocks
    vae_dtype: str | None = None  # the VAE's dtype, "bfloat16" or "float32"; None: as loaded (wan.levers.vae_precision)

    def as_dict(self) -> dict:
        return asdict(self)


def parse_levers(text: str) -> dict:
    """``fp8/compile/cache=fbc:0.05`` -> {"fp8": "all", "compile": True, "cache": "fbc:0.05"} (benchmark mode names).

    A bare ``fp8`` is ``fp8=all``, every linear layer of the blocks, as a bare ``--fp8`` is.
    """
    names = {f.name for f in fields(Levers)}
    levers: dict = {}
    for token in filter(None, text.split("/")):
        key, has_value, value = token.partition("=")
        if key not in names:
            raise ConfigError(f"unknown lever {key!r} in a mode; levers: {', '.join(sorted(names))}")
        levers[key] = value if has_value else True
    if levers.get("fp8") is True:
        levers["fp8"] = "all"
    check_lever_values(levers)
    return levers


def check_lever_values(levers: dict) -> None:
    """A one-line error for a lever value its module does not take (lever name -> value; unset: None or "")."""
    if levers.get("fp8"):
        check_fp8_scope(levers["fp8"])
    if levers.get("cache"):
        parse_cache_spec(levers["cache"])
    if levers.get("vae_dtype"):
        check_vae_dtype(levers["vae_dtype"])


def check_levers(levers: Levers) -> None:
    """A one-line error for a combination of levers that cannot run together."""
    if levers.fp8 and levers.compile and levers.cache:
        # Measured on an H200 (torch 2.11, torchao 0.17): InternalTorchDynamoError in torchao's
        # __torch_function__; float8 + compile and float8 + cache each run (docs/PERFORMANCE.md).
        raise ConfigError(
            "--fp8 with --cache and --compile: torch.compile fails on torchao's float8 weights when a cache "
            "splits the graph; add --no-compile or --cache none"
        )


def apply_levers(pipe, levers: Levers) -> None:
    """Install ``levers`` on a loaded, placed pipeline (once; quantisation and compilation are not undone)."""
    check_levers(levers)
    if levers.attention_backend:
        set_attention_backend(pipe, levers.attention_backend)
    if levers.fuse_projections:
        fuse_projections(pipe)
    if levers.fuse_norm_rope:
        fuse_norm_rope(pipe)
    if levers.fp8:
        quantize_experts_fp8(pipe, levers.fp8)
    if levers.fuse_gelu:
        fuse_gelu_epilogue(pipe)
    if levers.cache:
        enable_cache(pipe, levers.cache)
    if levers.compile:
        compile_experts(pipe, fullgraph=levers.cache is None)
    if levers.vae_dtype:
        cast_vae(pipe, levers.vae_dtype)
    logger.info("levers: %s", ", ".join(f"{k}={v}" for k, v in levers.as_dict().items() if v) or "none")
