"""Attention kernels on Wan2.2-A14B's self-attention shapes: each kernel by name, timed, checked against the first.

q, k, v come in the layout diffusers' Wan attention hands its backends, (1, L, heads, head_dim); SDPA
gets them as (1, heads, L, head_dim) views, as diffusers' ``native`` backend does. Kernels from other
packages run where installed; a kernel this machine lacks records its error instead of raising.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.measure import now
from benchmarks.plan import sequence_lengths
from benchmarks.weights import A14B_CONFIG
from wan.config import load_task_config
from wan.levers.attention import (
    FLASH_3,
    FLASH_4,
    SAGE,
    FlashTile,
    flash_4_hopper,
    flash_attention_3,
    flash_attention_4,
    local_kernel_problem,
)

logger = logging.getLogger("benchmarks")

HEADS, HEAD_DIM = A14B_CONFIG["num_attention_heads"], A14B_CONFIG["attention_head_dim"]
KERNELS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
OTHER_KERNELS = ("flash_4", "flash_3", "sage")
THIRD_PARTY = ("flash_attn", "flash_attn_interface", "flash_attn.cute", "sageattention", "kernels")


def released_shapes() -> dict[str, int]:
    """Self-attention tokens of 81 frames at 480p and 720p, from the engine's geometry."""
    task = load_task_config("t2v-A14B")
    return {
        name: sequence_lengths(task, size, 81)["full"] for name, size in (("480p", "832*480"), ("720p", "1280*720"))
    }


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent is missing
        return False


def attend(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Kernel ``name`` on (batch, tokens, heads, dim) tensors, the output in that layout."""
    if name.startswith("flash_4"):
        if why := local_kernel_problem(FLASH_4, q.device):
            raise RuntimeError(why)
        if name == "flash_4":
            return flash_attention_4(q, k, v)
        return flash_4_hopper(q, k, v, parse_tile(name))
    if name == "flash_3":
        if why := local_kernel_problem(FLASH_3, q.device):
            raise RuntimeError(why)
        return flash_attention_3(q, k, v)
    if name == "sage":
        if why := local_kernel_problem(SAGE, q.device):
            raise RuntimeError(why)
        from sageattention import sageattn

        return sageattn(q, k, v, tensor_layout="NHD", is_causal=False)
    with sdpa_kernel([KERNELS[name]]):
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def parse_tile(name: str) -> FlashTile:
    """``flash_4:128x176:nors:nool`` -> FlashTile(128, 176, mma_pv_is_rs=False, intra_wg_overlap=False)."""
    size, *flags = name.split(":")[1:]
    tile_m, tile_n = (int(v) for v in size.split("x"))
    unknown = set(flags) - {"nors", "nool"}
    if unknown:
        raise SystemExit(f"error: unknown flash_4 tile flags {sorted(unknown)} in {name}; use nors, nool")
    return FlashTile(tile_m, tile_n, "nors" not in flags, "nool" not in flags)


def time_ms(fn, device: torch.device, repeats: int) -> float:
    """Mean milliseconds of ``fn`` over ``repeats`` calls, after one untimed call."""
    fn()
    start = now(device)
    for _ in range(repeats):
        fn()
    return (now(device) - start) * 1e3 / repeats


def measure_shape(tokens: int, device: torch.device, dtype: torch.dtype, repeats: int, kernels: list[str]) -> dict:
    """Every kernel on one (1, HEADS, tokens, HEAD_DIM) problem; a kernel this machine lacks records its error."""
    q, k, v = (torch.randn(1, tokens, HEADS, HEAD_DIM, device=device, dtype=dtype) for _ in range(3))
    flops = 4 * HEADS * tokens * tokens * HEAD_DIM
    result: dict[str, Any] = {"tokens": tokens, "flops": flops}
    reference = None
    for name in kernels:
        try:
            out = attend(name, q, k, v)
            ms = time_ms(lambda name=name: attend(name, q, k, v), device, repeats)
        except Exception as exc:  # a kernel this GPU or package lacks, or a tile that does not fit: recorded
            result[name] = {"error": (str(exc).splitlines() or [type(exc).__name__])[0][:200]}
            continue
        reference = out.float() if reference is None else reference
        error = float((out.float() - reference).norm() / reference.norm())
        result[name] = {"ms": ms, "tflops": flops / ms / 1e9, "relative_error_vs_first": error}
        logger.info("%d tokens %-9s %8.1f ms %6.0f TFLOP/s", tokens, name, ms, flops / ms / 1e9)
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    result["default"] = {"ms": time_ms(lambda: F.scaled_dot_product_attention(qh, kh, vh), device, repeats)}
    logger.info("%d tokens default   %8.1f ms", tokens, result["default"]["ms"])
    return result
