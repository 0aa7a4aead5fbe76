"""Compile lever: regional torch.compile of the repeated transformer blocks.

Both experts are ``WanTransformer3DModel``s with identical block classes, so the compiled code of
the first block is reused for all 80 blocks (dynamo treats module parameters as inputs). With
``dynamic=True`` the token count is symbolic: half-frame generation's two sequence lengths compile
once, not at every change. Compile time is spent on the first forward; ``compile_seconds`` reads
dynamo's own accounting so the sidecar can report it apart from generation time.
"""

from __future__ import annotations

import torch


def compile_experts(pipe) -> None:
    """``compile_repeated_blocks`` on both experts, after any step cache (``wan.levers.cache``) is installed.

    ``fullgraph`` makes a graph break an error rather than a silent slowdown, except in an expert with a
    cache: its hooks decide in Python whether a block runs, so its blocks compile in pieces.
    """
    for expert in pipe.experts.values():
        expert.compile_repeated_blocks(fullgraph=not expert.is_cache_enabled, dynamic=True)


def compile_seconds() -> float:
    """Seconds dynamo and inductor have spent compiling in this process so far.

    Only dynamo's top-level entry counts: the other timers are its nested phases (inductor's
    lowering, codegen, ...), and summing them all counted the same seconds several times over.
    """
    from torch._dynamo.utils import compilation_time_metrics

    return float(sum(compilation_time_metrics.get("_compile.compile_inner", [])))


def reset_compiled() -> None:
    """Forget compiled code (tests that compile several models in one process)."""
    torch._dynamo.reset()
