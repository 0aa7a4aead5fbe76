"""FP8 lever: float8 (e4m3) linear layers in the experts' transformer blocks, through torchao.

Row-wise scales for activations (dynamic, per token) and weights (per output channel), the scheme
that keeps the output closest to bf16 among torchao's float8 recipes. Only the blocks' linear
layers are quantised: the patch/text/time embeddings and the output head stay in their dtype.
Needs float8 tensor cores (compute capability 8.9+: Ada, Hopper, Blackwell).
"""

from __future__ import annotations

import torch

from wan.config import ConfigError

MIN_CAPABILITY = (8, 9)


def fp8_available(device: torch.device) -> str | None:
    """None if float8 matmuls run on ``device``, else why not (one line)."""
    if device.type != "cuda":
        return f"float8 needs a GPU with compute capability >= 8.9; the device is {device.type}"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return f"float8 needs compute capability >= 8.9; {torch.cuda.get_device_name(device)} has {capability}"
    try:
        import torchao  # noqa: F401
    except ImportError:
        return "float8 needs torchao: pip install torchao"
    return None


def quantize_experts_fp8(pipe) -> None:
    """Swap the blocks' ``nn.Linear`` weights for torchao float8 tensors with row-wise scales."""
    problem = fp8_available(pipe.device)
    if problem:
        raise ConfigError(f"--fp8: {problem}; run without --fp8")
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    for expert in pipe.experts.values():
        quantize_(expert, config, filter_fn=_is_block_linear)


def _is_block_linear(module: torch.nn.Module, name: str) -> bool:
    return isinstance(module, torch.nn.Linear) and name.startswith("blocks.")
