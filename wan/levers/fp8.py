"""FP8 lever: float8 (e4m3) linear layers in the experts' transformer blocks, through torchao.

Row-wise scales for activations (dynamic, per token) and weights (per output channel), the scheme
that keeps the output closest to bf16 among torchao's float8 recipes. Only the blocks' linear
layers are quantised: the patch/text/time embeddings and the output head stay in their dtype.
The scope ``ffn`` quantises only the feed-forward layers (47% of A14B's linear FLOPs), the ones whose
rounding moves t2v-tiny's video least (docs/QUALITY.md); ``all`` every linear layer of the blocks.
Needs float8 tensor cores (compute capability 8.9+: Ada, Hopper, Blackwell).
"""

from __future__ import annotations

import logging

import torch

from wan.errors import ConfigError

logger = logging.getLogger(__name__)

MIN_CAPABILITY = (8, 9)


def fp8_problem(device: torch.device) -> str | None:
    """Why float8 matmuls cannot run on ``device`` (one line), or None if they run."""
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


def quantize_experts_fp8(pipe, scope: str = "all") -> None:
    """Swap the blocks' ``nn.Linear`` weights in ``scope`` (``all`` or ``ffn``, checked by the lever) for torchao
    float8 tensors with row-wise scales."""
    problem = fp8_problem(pipe.device)
    if problem:
        raise ConfigError(f"--fp8: {problem}; run without --fp8")
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    for expert in pipe.experts.values():
        names = set(fp8_layer_names(expert, scope))
        dtypes = {expert.get_submodule(name).weight.dtype for name in names}
        if dtypes != {torch.bfloat16}:
            raise ConfigError(
                f"--fp8 quantises bfloat16 weights; the experts are {', '.join(map(str, dtypes))}: "
                "add --convert_model_dtype"
            )
        quantize_(expert, config, filter_fn=lambda _module, name, names=names: name in names)
        logger.info("fp8 (%s): %d linear layers of an expert quantised", scope, len(names))


def fp8_layer_names(expert: torch.nn.Module, scope: str) -> list[str]:
    """The names of ``expert``'s linear layers that ``scope`` quantises: the blocks' (``all``) or their FFNs'."""
    return [
        name
        for name, module in expert.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith("blocks.") and (scope == "all" or ".ffn." in name)
    ]
