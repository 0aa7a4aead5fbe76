"""Attention backend lever: diffusers' attention dispatcher (native SDPA, cuDNN, flash, sage, ...).

One more name, ``flash_4``: FlashAttention 4 (the ``flash-attn-4`` package, CuTe DSL kernels with a
Hopper forward) run through diffusers' ``flash_4_hub`` backend slot, its kernel taken from the
installed package instead of a Hub download (no network on GPU hosts). The kernel is wrapped in a
torch custom op, so regional ``torch.compile`` sees one opaque call instead of tracing CuTe code.
It is the default where it runs, so before it is chosen it runs once on a small problem against
PyTorch's attention: a broken install or kernel build makes it unavailable (the default falls back
to PyTorch's attention; asking for it is a one-line error) instead of failing mid-run.

``flash_3``: FlashAttention 3 (the ``flash_attn_3`` package built from flash-attention's ``hopper/``
folder; no wheel on PyPI) the same way, through the ``_flash_3_hub`` slot and a custom op that returns
the output alone. Hopper only. It is the default where FlashAttention 4 is not installed: on an H100 at
A14B's shapes 710 / 690 TFLOP/s (480p / 720p) against cuDNN's 588 / 564, 0.3% from cuDNN's output.

``sage`` (diffusers' name) runs SageAttention 2 from the installed ``sageattention`` package the same
way, through the ``sage_hub`` slot and a custom op: diffusers' own ``sage`` backend calls the package's
Python, whose quantisation kernels are plain pybind calls that break a ``fullgraph`` compile. It
quantises Q/K to int8 and P/V to fp8 (3.9% from cuDNN's output on A14B's shapes), so it is never a
default and never in ``--preset exact``.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from wan.errors import ConfigError

logger = logging.getLogger(__name__)

FLASH_4 = "flash_4"
FLASH_3 = "flash_3"
SAGE = "sage"


class FlashTile(NamedTuple):
    """A FlashAttention 4 Hopper forward configuration: query x key tile, P@V from registers, overlap."""

    tile_m: int
    tile_n: int
    mma_pv_is_rs: bool = True
    intra_wg_overlap: bool = True


HOPPER_HEAD_DIM_128_TILE: FlashTile | None = FlashTile(192, 128, mma_pv_is_rs=False)
"""The tile for A14B's head_dim 128 (non-causal) on Hopper, instead of the package's 128 x 128 with P@V
from registers: 694 vs 677 TFLOP/s at 480p, 674 vs 655 at 720p on an H200, the same key tile so the same
sums (``scripts/bench_attention.py``'s sweep, docs/PERFORMANCE.md). None: the package's own choice."""


def hopper_tile(q: torch.Tensor, causal: bool) -> FlashTile | None:
    """The tuned tile where it was measured (a Hopper GPU, head_dim 128, not causal), else None."""
    if HOPPER_HEAD_DIM_128_TILE is None or causal or q.shape[-1] != 128 or not q.is_cuda:
        return None
    return HOPPER_HEAD_DIM_128_TILE if torch.cuda.get_device_capability(q.device)[0] == 9 else None


def flash_4_hopper(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tile: FlashTile, softmax_scale: float | None = None
) -> torch.Tensor:
    """FlashAttention 4's forward with an explicit Hopper tile (its public call has no tile argument)."""
    from flash_attn.cute.interface import _flash_attn_fwd

    out = _flash_attn_fwd(
        q,
        k,
        v,
        softmax_scale=softmax_scale,
        tile_mn=(tile.tile_m, tile.tile_n),
        mma_pv_is_rs=tile.mma_pv_is_rs,
        intra_wg_overlap=tile.intra_wg_overlap,
    )
    return out[0] if isinstance(out, tuple) else out


@torch.library.custom_op("wan::flash_attention_4", mutates_args=())
def flash_attention_4(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float | None = None, causal: bool = False
) -> torch.Tensor:
    """FlashAttention 4 on (batch, tokens, heads, head_dim) tensors; the output only, not the log-sum-exp."""
    from flash_attn.cute import flash_attn_func

    if tile := hopper_tile(q, causal):
        return flash_4_hopper(q, k, v, tile, softmax_scale)
    out = flash_attn_func(q, k, v, softmax_scale=softmax_scale, causal=causal)
    return out[0] if isinstance(out, tuple) else out


def _output_like(q, k, v, *_, **__):
    """The shape and dtype of an attention call's output, for compile's tracing of the custom ops."""
    return q.new_empty(*q.shape[:-1], v.shape[-1])


flash_attention_4.register_fake(_output_like)


@torch.library.custom_op("wan::flash_attention_3", mutates_args=())
def flash_attention_3(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float | None = None, causal: bool = False
) -> torch.Tensor:
    """FlashAttention 3 on (batch, tokens, heads, head_dim) tensors; the output only, not the log-sum-exp."""
    from flash_attn_interface import flash_attn_func

    out = flash_attn_func(q, k, v, softmax_scale=softmax_scale, causal=causal)
    return out[0] if isinstance(out, tuple) else out


flash_attention_3.register_fake(_output_like)


def _flash_3_hub_kernel(
    q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, return_attn_probs=False, **defaults
):
    """The call diffusers' ``_flash_3_hub`` backend makes on one GPU, answered by the installed package through the
    op; its other arguments (splits, descales, ...) are the package's defaults."""
    if return_attn_probs or tuple(window_size) != (-1, -1) or softcap:
        raise ValueError("the local FlashAttention 3 kernel runs full attention and returns no log-sum-exp")
    return flash_attention_3(q, k, v, softmax_scale=softmax_scale, causal=causal)


@torch.library.custom_op("wan::sage_attention", mutates_args=())
def sage_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float | None = None, causal: bool = False
) -> torch.Tensor:
    """SageAttention 2 on (batch, tokens, heads, head_dim) tensors (the package picks the GPU's kernel).

    Contiguous, as the fake says: for a head_dim under 64 the package returns a slice of its padded output.
    """
    from sageattention import sageattn

    return sageattn(q, k, v, tensor_layout="NHD", is_causal=causal, sm_scale=sm_scale).contiguous()


sage_attention.register_fake(_output_like)


def _sage_hub_kernel(q, k, v, tensor_layout="NHD", is_causal=False, sm_scale=None, return_lse=False):
    """The call diffusers' ``sage_hub`` backend makes, answered by the installed package through the op."""
    if tensor_layout != "NHD" or return_lse:
        raise ValueError("the local SageAttention kernel takes the NHD layout and returns no log-sum-exp")
    return sage_attention(q, k, v, sm_scale=sm_scale, causal=is_causal)


ONE_GPU = "the engine runs it on one GPU only (--ulysses_size, --cfg_parallel)"


class LocalKernel(NamedTuple):
    """A backend the engine runs from an installed package: what it needs before its self-check (a GPU it has
    kernels for, its modules, one GPU) with the one line each says when missing, diffusers' Hub slot it fills,
    the kernel (on the NHD layout), the package's name, and how far from PyTorch's attention it may be."""

    gpu: Callable[[torch.device], bool]
    no_gpu: str
    modules: tuple[str, ...]
    no_package: str
    no_parallel: str
    hub_slot: str
    kernel: Callable
    package: str
    tolerance: float


def _local_kernels() -> dict[str, LocalKernel]:
    # Built per call and calling the GPU checks by name, so the tests can stand in for them.
    return {
        FLASH_4: LocalKernel(
            gpu=lambda device: hopper_or_newer(device),
            no_gpu="it needs a Hopper or newer GPU",
            modules=("flash_attn", "flash_attn.cute"),
            no_package="it needs the flash-attn-4 package; pip install flash-attn-4",
            no_parallel="diffusers has no context-parallel path for it (--ulysses_size, --cfg_parallel)",
            hub_slot="flash_4_hub",
            kernel=flash_attention_4,
            package="flash-attn-4",
            tolerance=1e-2,
        ),
        FLASH_3: LocalKernel(
            gpu=lambda device: hopper(device),
            no_gpu="it needs a Hopper GPU (H100, H200)",
            modules=("flash_attn_interface", "flash_attn_3"),
            no_package="it needs the flash_attn_3 package, built from flash-attention's hopper/ folder "
            "(docs/PERFORMANCE.md)",
            no_parallel=ONE_GPU,
            hub_slot="_flash_3_hub",
            kernel=_flash_3_hub_kernel,
            package="flash_attn_3",
            tolerance=1e-2,
        ),
        # int8 Q/K and fp8 P/V: 3.9% from cuDNN on A14B's shapes; a broken build is far off or fails
        SAGE: LocalKernel(
            gpu=lambda device: nvidia_gpu(device),
            no_gpu="it needs an NVIDIA GPU",
            modules=("sageattention",),
            no_package="it needs the sageattention package (SageAttention 2, built from source; "
            "see docs/PERFORMANCE.md)",
            no_parallel=ONE_GPU,
            hub_slot="sage_hub",
            kernel=_sage_hub_kernel,
            package="sageattention",
            tolerance=0.1,
        ),
    }


def local_kernel_problem(backend: str | None, device: torch.device, parallel: bool = False) -> str | None:
    """Why ``backend``, if it is one the engine runs from an installed package, cannot run here (one line);
    else None. The package's kernel runs once per GPU against PyTorch's attention before it is said to run."""
    local = _local_kernels().get(backend)
    if local is None:
        return None
    if not local.gpu(device):
        return local.no_gpu
    if any(importlib.util.find_spec(name) is None for name in local.modules):  # left to right: parents first
        return local.no_package
    if parallel:
        return local.no_parallel
    return _kernel_problem(backend, _one_name(device))


def backend_names() -> list[str]:
    """Every name ``--attention_backend`` takes: diffusers' backends plus ``flash_4`` and ``flash_3``."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return [b.value for b in AttentionBackendName] + [FLASH_4, FLASH_3]


def nvidia_gpu(device: torch.device) -> bool:
    """SageAttention's kernels are CUDA only (a function, so the CPU tests can stand in for a GPU)."""
    return device.type == "cuda"


def hopper_or_newer(device: torch.device) -> bool:
    """FlashAttention 4 has forward kernels for compute capability 9.0 and up."""
    return nvidia_gpu(device) and torch.cuda.get_device_capability(device)[0] >= 9


def hopper(device: torch.device) -> bool:
    """FlashAttention 3's kernels use Hopper's instructions (compute capability 9.x) and no others."""
    return nvidia_gpu(device) and torch.cuda.get_device_capability(device)[0] == 9


def _one_name(device: torch.device) -> str:
    """The GPU's one name (``cuda`` and ``cuda:0`` are one GPU), so its self-check runs once."""
    if device.type == "cuda" and device.index is None:
        device = torch.device(device.type, torch.cuda.current_device())
    return str(device)


@functools.cache
def _kernel_problem(backend: str, device: str) -> str | None:
    """Run a locally installed kernel once on a small problem against PyTorch's SDPA: None if they agree, else why
    not. A default or a preset that would take it then falls back instead of failing mid-run."""
    local = _local_kernels()[backend]
    generator = torch.Generator(device).manual_seed(0)  # leaves the global random state to the run
    q, k, v = (torch.randn(1, 256, 2, 128, device=device, dtype=torch.bfloat16, generator=generator) for _ in range(3))
    try:
        out = local.kernel(q, k, v).float()
    except Exception as exc:  # any failure of the third-party package or its kernel build
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        problem = f"{local.package} failed on this GPU ({first}); reinstall it"
    else:
        reference = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        error = float((out - reference.transpose(1, 2).float()).norm() / reference.float().norm())
        far = error >= local.tolerance
        problem = f"{local.package} disagrees with PyTorch's attention ({error:.1%} apart)" if far else None
    if problem:
        logger.warning("attention: %s; %s is left out unless it is asked for", problem, backend)
    return problem


def default_attention_backend(device: torch.device, parallel: bool = False) -> str | None:
    """The fastest backend that keeps the video and runs here: ``flash_4``, else ``flash_3``, where one runs; else
    diffusers' default (PyTorch's SDPA).

    Measured at A14B's shapes (docs/PERFORMANCE.md): on an H200 FlashAttention 4 682 TFLOP/s against cuDNN's 566,
    PyTorch's own choice; on an H100 FlashAttention 3 710 against 588. The same math, so the video stays within
    bf16 rounding.
    """
    if flash_4_available(device, parallel):
        return FLASH_4
    return FLASH_3 if local_kernel_problem(FLASH_3, device, parallel) is None else None


def flash_4_available(device: torch.device, parallel: bool = False) -> bool:
    """Whether ``flash_4`` runs here (``local_kernel_problem`` says why not)."""
    return local_kernel_problem(FLASH_4, device, parallel) is None


def _use_local_kernel(local: LocalKernel) -> str:
    """Point diffusers' Hub slot at the installed package's kernel; return the slot's backend name."""
    from diffusers.models.attention_dispatch import _HUB_KERNELS_REGISTRY, AttentionBackendName

    _HUB_KERNELS_REGISTRY[AttentionBackendName(local.hub_slot)].kernel_fn = local.kernel
    return local.hub_slot


def _set_processor_backends(expert, backend: str) -> None:
    """What ``ModelMixin.set_attention_backend`` does after its package checks, which want the Hub's ``kernels``."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    for module in expert.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_attention_backend"):
            processor._attention_backend = AttentionBackendName(backend)


def check_backend_name(backend: str) -> None:
    """A one-line error for a name ``--attention_backend`` does not take."""
    names = backend_names()
    if backend not in names:
        raise ConfigError(f"unknown --attention_backend {backend!r}; choose one of: {', '.join(names)}")


def set_attention_backend(pipe, backend: str) -> None:
    """Use ``backend`` in both experts; a backend this machine lacks is a one-line error."""
    check_backend_name(backend)
    if local := _local_kernels().get(backend):
        if why := local_kernel_problem(backend, pipe.device):
            raise ConfigError(f"--attention_backend {backend}: {why}; run without it")
        diffusers_name = _use_local_kernel(local)
        for expert in pipe.experts.values():
            _set_processor_backends(expert, diffusers_name)
        return
    try:
        for expert in pipe.experts.values():
            expert.set_attention_backend(backend)
    except (ValueError, KeyError, RuntimeError, ImportError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"--attention_backend {backend} is not available here: {first}") from exc
