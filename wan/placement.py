"""Where each part of the pipeline lives while it works: the placement lever.

Three placements, chosen once per run and applied to the loaded pipeline from outside the loop:

- ``Resident``: everything on the device (``resident``, the official ``--offload_model False``), or
  with the text encoder visiting the device only while it encodes (``resident_lean``), so the 11 GB
  umT5 of A14B does not sit beside the experts while they sample and decode.
- ``ModelOffload``: the official ``--offload_model True``: every part lives on the CPU and moves to the
  device as a whole while it works (the idle expert goes back to the CPU).
- ``BlockStream``: the experts stay on the CPU in pinned memory and diffusers' group offloading
  streams them to the device block by block on a side CUDA stream, overlapped with compute; the VAE
  decodes in tiles. For GPUs too small to hold both experts.

``choose_placement`` picks one when the user did not: resident if the estimate of the run's peak
fits the device's free memory, else whole-model offload if one part at a time fits (1.03x resident
at 480p on an H200, where streaming costs 1.19x), else block streaming; the log says which and why.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from wan.choices import PLACEMENTS
from wan.config import HIGH
from wan.errors import ConfigError

logger = logging.getLogger(__name__)

GIB = 1024**3
HEADROOM = 0.92
"""Fraction of free device memory a resident estimate may use (allocator fragmentation, CUDA context)."""


def module_bytes(module: torch.nn.Module | None) -> int:
    """Bytes of a module's parameters and buffers."""
    if module is None:
        return 0
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def dit_activation_bytes(tokens: int, dim: int, ffn_dim: int, dtype_bytes: int = 2) -> int:
    """Peak working memory of one expert forward: the FFN's hidden plus a handful of [tokens, dim] tensors.

    Inference keeps no activations across blocks, so the peak is one block's working set: the FFN's
    intermediate (tokens x ffn_dim, with its GELU copy) and about ten residual-stream-sized tensors.
    """
    return tokens * (2 * ffn_dim + 10 * dim) * dtype_bytes


def vae_decode_bytes(frames: int, height: int, width: int, tiled: bool) -> int:
    """Working memory of the Wan VAE decode (fp32): it runs one latent frame (four video frames) at a time.

    About 30 KB per pixel of the frame, untiled: measured on an H200 as the decode's peak over the
    weights, 11.9 GB at 832x480 and 24 GB at 1280x720 (docs/PERFORMANCE.md). Tiling bounds it to a
    256x256 tile's worth. ``frames`` sizes the decoded output itself.
    """
    per_frame = (min(height, 256) * min(width, 256) if tiled else height * width) * 30_000
    return per_frame + frames * height * width * 3 * 4


@dataclass
class Placement:
    """Everything stays where ``setup`` put it (the CPU, or a sharded multi-GPU layout)."""

    name = "in_place"
    reason: str = ""

    def setup(self, pipe) -> None:
        """Move the loaded parts to where this placement keeps them."""

    def expert(self, pipe, name: str) -> torch.nn.Module:
        """The expert for the next step, ready to run."""
        return pipe.experts[name]

    @contextmanager
    def using(self, module: torch.nn.Module, device: torch.device) -> Iterator[None]:
        """Run ``module`` on ``device`` for the duration of the block."""
        yield


@dataclass
class Resident(Placement):
    """Experts and VAE on the device; the text encoder visits it only to encode (unless ``keep_text_encoder``)."""

    name = "resident"
    keep_text_encoder: bool = False
    vae_tiling: bool = False  # decode in tiles: ~24 GB less at 720p, for a few seconds more

    def setup(self, pipe) -> None:
        for module in (*pipe.experts.values(), pipe.components.vae):
            _to(module, pipe.device)
        if self.vae_tiling and pipe.components.vae is not None:
            pipe.components.vae.enable_tiling()
        text_home = pipe.text_device if self.keep_text_encoder else torch.device("cpu")
        _to(pipe.components.text_encoder, text_home)
        if not self.keep_text_encoder:
            _pin(pipe.components.text_encoder, pipe.device)

    @contextmanager
    def using(self, module: torch.nn.Module, device: torch.device) -> Iterator[None]:
        with _visit(module, device, enabled=not self.keep_text_encoder):
            yield


@dataclass
class ModelOffload(Placement):
    """The official ``--offload_model True``: whole parts move to the device while they work.

    The parts live in page-locked CPU memory, and a visit only rebinds them: going to the device is
    one fast copy per tensor, coming back drops the device copy (no new CPU allocation). An expert
    stays between steps and leaves when another part's turn comes, so the decode never shares the
    device with it (39.8 GiB peak at 480p before, the expert and the decode's working set together).
    """

    name = "model_offload"
    _visiting: dict[str, dict] = field(default_factory=dict, repr=False)

    def setup(self, pipe) -> None:
        for module in (*pipe.experts.values(), pipe.components.vae, pipe.components.text_encoder):
            _to(module, torch.device("cpu"))
            _pin(module, pipe.device)

    def expert(self, pipe, name: str) -> torch.nn.Module:
        for other in [n for n in self._visiting if n != name]:
            _recall(self._visiting.pop(other))
        if name not in self._visiting:
            self._visiting[name] = _send(pipe.experts[name], pipe.device)
        return pipe.experts[name]

    @contextmanager
    def using(self, module: torch.nn.Module, device: torch.device) -> Iterator[None]:
        for name in list(self._visiting):  # sampling is over: the expert makes room for the next part
            _recall(self._visiting.pop(name))
        with _visit(module, device):
            yield


@dataclass
class BlockStream(Placement):
    """Experts streamed block by block from pinned CPU memory (diffusers group offloading); tiled decode."""

    name = "block_stream"
    blocks_per_group: int = 1

    def setup(self, pipe) -> None:
        if pipe.device.type != "cuda":
            raise ConfigError("block streaming (--placement stream) needs a CUDA device; use --placement resident")
        from diffusers.hooks import apply_group_offloading

        for expert in pipe.experts.values():
            _to(expert, torch.device("cpu"))
            _pin(expert, pipe.device)  # group offloading keeps these pinned tensors instead of copying
            apply_group_offloading(
                expert,
                onload_device=pipe.device,
                offload_type="block_level",
                num_blocks_per_group=self.blocks_per_group,
                use_stream=True,
                record_stream=True,
                non_blocking=True,
            )
        _to(pipe.components.text_encoder, torch.device("cpu"))
        _pin(pipe.components.text_encoder, pipe.device)
        if pipe.components.vae is not None:
            pipe.components.vae.to(pipe.device)
            pipe.components.vae.enable_tiling()

    @contextmanager
    def using(self, module: torch.nn.Module, device: torch.device) -> Iterator[None]:
        with _visit(module, device):
            yield


def forward_bytes(pipe, tokens: int) -> int:
    """Working memory of one forward of this pipeline's experts over ``tokens``."""
    config = pipe.experts[HIGH].config
    return dit_activation_bytes(tokens, config.num_attention_heads * config.attention_head_dim, config.ffn_dim)


def resident_peak_bytes(
    pipe, tokens: int, frames: int, height: int, width: int, *, with_text_encoder: bool, tiled: bool = False
) -> int:
    """Estimated device peak of a resident run: both experts and the VAE, plus the largest stage's working set.

    The stages take turns: text encoding, one expert forward, the VAE decode. ``with_text_encoder``:
    the encoder stays on the device throughout; otherwise it visits only to encode.
    """
    text = module_bytes(pipe.components.text_encoder)
    weights = sum(module_bytes(e) for e in pipe.experts.values()) + module_bytes(pipe.components.vae)
    stages = (
        text * 1.1 if not with_text_encoder else text * 0.1,
        forward_bytes(pipe, tokens),
        vae_decode_bytes(frames, height, width, tiled=tiled),
    )
    return int(weights + (text if with_text_encoder else 0) + max(stages))


def offload_peak_bytes(pipe, tokens: int, frames: int, height: int, width: int) -> int:
    """Estimated device peak of whole-model offload: one part at a time, the largest with its working set."""
    stages = (
        module_bytes(pipe.components.text_encoder) * 1.1,
        max(module_bytes(e) for e in pipe.experts.values()) + forward_bytes(pipe, tokens),
        module_bytes(pipe.components.vae) + vae_decode_bytes(frames, height, width, tiled=False),
    )
    return int(max(stages))


def choose_placement(pipe, choice: str, *, tokens: int, frames: int, height: int, width: int) -> Placement:
    """The placement for ``choice`` (one of ``PLACEMENTS``); ``auto`` takes the fastest that fits: everything
    resident, then the text encoder visiting only to encode, then that with a tiled decode, then whole parts
    visiting in turn (offload), then streaming."""
    if choice not in PLACEMENTS:
        raise ConfigError(f"unknown --placement {choice!r}; choose one of: {', '.join(PLACEMENTS)}")
    if choice == "offload":
        return ModelOffload(reason="--offload_model True / --placement offload")
    if choice == "stream":
        return BlockStream(reason="--placement stream")
    if choice == "resident_lean":
        return Resident(keep_text_encoder=False, reason="--placement resident_lean")
    if choice == "resident" or pipe.device.type != "cuda":
        return Resident(keep_text_encoder=True, reason=f"{choice} on {pipe.device.type}")
    free, _total = torch.cuda.mem_get_info(pipe.device)
    free += sum(module_bytes(m) for m in _on_device(pipe, pipe.device))  # what is already there counts as free
    shape = (tokens, frames, height, width)
    for keep, tiled in ((True, False), (False, False), (False, True)):
        need = resident_peak_bytes(pipe, *shape, with_text_encoder=keep, tiled=tiled)
        if need <= HEADROOM * free:
            where = "stays on the device" if keep else "visits the device only to encode"
            reason = f"estimated peak {need / GIB:.1f} GiB fits {free / GIB:.1f} GiB free; the text encoder {where}"
            return Resident(
                keep_text_encoder=keep, vae_tiling=tiled, reason=reason + (", tiled decode" if tiled else "")
            )
    resident = f"estimated resident peak {need / GIB:.1f} GiB exceeds {free / GIB:.1f} GiB free"
    offload = offload_peak_bytes(pipe, *shape)
    if offload <= HEADROOM * free:
        return ModelOffload(reason=f"{resident}; one part at a time peaks at {offload / GIB:.1f} GiB: parts visit")
    return BlockStream(reason=f"{resident}, and one part at a time {offload / GIB:.1f} GiB: streaming blocks")


def apply_placement(pipe, placement: Placement) -> None:
    """Install ``placement`` on a loaded pipeline and move its parts accordingly."""
    placement.setup(pipe)
    pipe.placement = placement
    logger.info("placement: %s (%s)", placement.name, placement.reason or "default")


def _on_device(pipe, device: torch.device) -> Iterable[torch.nn.Module]:
    parts = (*pipe.experts.values(), pipe.components.vae, pipe.components.text_encoder)
    return [m for m in parts if m is not None and _device_of(m) == device]


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _pin(module: torch.nn.Module | None, device: torch.device) -> None:
    """Page-lock a CPU module's tensors one at a time, for fast copies to ``device`` (a CUDA device only).

    In place, tensor by tensor: a whole-model pinned copy would double host memory for a moment.
    """
    if module is None or device.type != "cuda":
        return
    for tensor in (*module.parameters(), *module.buffers()):
        tensor.data = tensor.data.pin_memory()


def _to(module: torch.nn.Module | None, device: torch.device) -> None:
    if module is not None and _device_of(module) != device:
        module.to(device)


def _send(module: torch.nn.Module, device: torch.device) -> dict[torch.Tensor, torch.Tensor]:
    """Copy every tensor of ``module`` to ``device``; returns the CPU tensors to rebind them to afterwards."""
    home = {}
    for tensor in (*module.parameters(), *module.buffers()):
        home[tensor] = tensor.data
        tensor.data = tensor.data.to(device, non_blocking=True)
    return home


def _recall(home: dict[torch.Tensor, torch.Tensor]) -> None:
    """Rebind the tensors to their CPU copies; the device copies are freed."""
    for tensor, cpu in home.items():
        tensor.data = cpu


@contextmanager
def _visit(module: torch.nn.Module | None, device: torch.device, *, enabled: bool = True) -> Iterator[None]:
    """``module`` on ``device`` for the block, then back on its CPU copy."""
    if not enabled or module is None or _device_of(module) == device:
        yield
        return
    home = _send(module, device)
    try:
        yield
    finally:
        _recall(home)
