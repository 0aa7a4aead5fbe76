"""Engine options: how the pipeline is built, resolved once from the command line's flags.

Every door into the engine (the CLI, batch runs, multi-GPU ranks, benchmarks, the service, Ray
workers) turns its flags into one frozen ``EngineOptions`` here, then calls ``wan.engine``. Nothing
writes resolved values back into an argparse namespace: the flags stay what the user typed, the
options are what the run uses, and the sidecar records the options.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wan.config import TaskConfig, load_task_config
from wan.errors import ConfigError
from wan.validation import check_flags

if TYPE_CHECKING:
    from wan.checkpoints import ExpectedModel
    from wan.levers import Levers
    from wan.lora import LoraFile

logger = logging.getLogger(__name__)

DEFAULT_DIST_TIMEOUT_S = 300.0
"""Longest wait of any collective after init (``wan.distributed``): bounds load-time skew between ranks,
not the VAE decode (the other ranks do not wait for rank 0's decode)."""
FLAG_DEFAULTS = {"cfg_truncate_steps": 0, "cfg_truncate_high_noise_steps": 0, "convert_model_dtype": False}
"""Flags whose argparse default is None (so a preset can tell "not given" apart) and their real default."""


@dataclass(frozen=True)
class ParallelOptions:
    """Multi-GPU layout of one video under torchrun (``wan.distributed``)."""

    ulysses_size: int = 1
    cfg_parallel: bool = False
    dit_fsdp: bool = False
    t5_fsdp: bool = False
    dist_timeout_s: float = DEFAULT_DIST_TIMEOUT_S

    @property
    def shards_one_video(self) -> bool:
        return self.ulysses_size > 1 or self.cfg_parallel or self.dit_fsdp or self.t5_fsdp


@dataclass(frozen=True)
class EngineOptions:
    """Everything that decides how the pipeline is built; frozen, so every door builds the same engine."""

    config: TaskConfig
    ckpt_dir: Path | None  # None: parts given in memory (the benchmarks' random weights)
    device: str  # "cuda", "cuda:N" or "cpu", resolved
    placement: str  # auto | resident | resident_lean | offload | stream
    convert_model_dtype: bool
    t5_cpu: bool
    preset: str | None
    levers: Levers
    preset_notes: tuple[str, ...] = ()
    loras: tuple[LoraFile, ...] = ()
    parallel: ParallelOptions = field(default_factory=ParallelOptions)

    def record(self) -> dict[str, Any]:
        """The sidecar's ``options``: what was resolved, not what was typed."""
        return {
            "convert_model_dtype": self.convert_model_dtype,
            "placement": self.placement,
            "preset": self.preset,
            "levers": self.levers.as_dict(),
            "preset_notes": list(self.preset_notes),
            "t5_cpu": self.t5_cpu,
            "device": self.device,
        }


def with_defaults(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The flags with ``--preset``'s defaults filled in where the user gave none, then the plain defaults.

    Returns a new dict; explicit flags always win over the preset.
    """
    from wan.levers.presets import preset_generation_defaults, preset_load_defaults

    preset = flags.get("preset")
    filled = dict(flags)
    for name, value in {**preset_generation_defaults(preset), **preset_load_defaults(preset)}.items():
        if filled.get(name) is None:
            filled[name] = value
    for name, value in FLAG_DEFAULTS.items():
        if filled.get(name) is None:
            filled[name] = value
    return filled


def resolve_ckpt_dir(flags: Mapping[str, Any], config: TaskConfig) -> Path:
    """The checkpoint folder, checked to exist before anything is loaded or logged."""
    if flags.get("ckpt_dir"):
        path = Path(flags["ckpt_dir"])
    else:
        path = config.ckpt_dir()
        if path is None:
            raise ConfigError(f"task {config.task} needs --ckpt_dir (the folder with its checkpoint)")
    if not path.is_dir():
        raise ConfigError(f"checkpoint folder {path} does not exist; pass --ckpt_dir")
    return path


def expected_model(config: TaskConfig, ckpt_dir: Path) -> ExpectedModel:
    """What the task needs from its checkpoint (``wan.checkpoints.ExpectedModel``): the released model's facts,
    or for a task of our own (the tiny models) what its config implies."""
    from wan.checkpoints import RELEASED_MODELS, ExpectedModel

    if config.task in RELEASED_MODELS:
        return RELEASED_MODELS[config.task]
    z_dim = 48 if config.vae_stride[1] == 16 else 16  # the Wan2.2 VAE compresses 16x16, the Wan2.1 VAE 8x8
    in_channels = z_dim + (4 + z_dim if config.kind == "i2v" else 0)
    return ExpectedModel(config.task, config.experts, in_channels, z_dim, release=str(ckpt_dir))


def placement_choice(flags: Mapping[str, Any]) -> str:
    """--placement, or what the official --offload_model means when only it is given; auto by default."""
    offload = flags.get("offload_model")
    official = None if offload is None else ("offload" if offload else "resident")
    placement = flags.get("placement")
    if placement is not None and official is not None and placement != official:
        raise ConfigError(f"--offload_model {offload} means --placement {official}, not {placement}; pass one of them")
    return placement or official or "auto"


def torchrun_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) in a plain process."""
    env = os.environ
    return int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0"))


def resolve_device(requested: str | None, local_rank: int = 0) -> str:
    """--device, or cuda where there is one; under torchrun each process takes the GPU of its local rank."""
    import torch

    if torch.cuda.is_available() and local_rank:
        torch.cuda.set_device(local_rank)  # "cuda" then means this rank's GPU
    return requested or ("cuda" if torch.cuda.is_available() else "cpu")


def parallel_options(flags: Mapping[str, Any]) -> ParallelOptions:
    timeout = flags.get("dist_timeout_s")
    return ParallelOptions(
        ulysses_size=flags.get("ulysses_size") or 1,
        cfg_parallel=bool(flags.get("cfg_parallel")),
        dit_fsdp=bool(flags.get("dit_fsdp")),
        t5_fsdp=bool(flags.get("t5_fsdp")),
        dist_timeout_s=DEFAULT_DIST_TIMEOUT_S if timeout is None else timeout,
    )


def resolve_options(flags: Mapping[str, Any], *, local_rank: int = 0) -> EngineOptions:
    """The engine options of ``flags`` (argparse dest names -> values; defaults filled by ``with_defaults``).

    Checks every flag, the checkpoint folder, the LoRA files and the levers against the device before
    anything loads; raises ``ConfigError`` with one line naming the problem.
    """
    import torch

    from wan.levers import explicit_levers, resolve_levers
    from wan.lora import check_loras, lora_specs, warn_if_distilled_without_loras

    flags = with_defaults(flags)
    config = load_task_config(flags.get("task") or "t2v-tiny")
    check_flags(flags, config)
    ckpt_dir = resolve_ckpt_dir(flags, config)
    from wan.checkpoints import check_checkpoint

    check_checkpoint(ckpt_dir, expected_model(config, ckpt_dir))  # configs and headers only: before any weights
    specs = lora_specs(dict(flags), config)
    warn_if_distilled_without_loras(flags.get("preset"), specs)
    loras = check_loras(specs, ckpt_dir=ckpt_dir)
    device = resolve_device(flags.get("device"), local_rank)
    parallel = parallel_options(flags)
    placement = placement_choice(flags)
    sharded = parallel.ulysses_size > 1 or parallel.cfg_parallel
    levers, notes = resolve_levers(flags.get("preset"), explicit_levers(flags), torch.device(device), sharded)
    return EngineOptions(
        config=config,
        ckpt_dir=ckpt_dir,
        device=device,
        placement=placement,
        convert_model_dtype=bool(flags["convert_model_dtype"]),
        t5_cpu=bool(flags.get("t5_cpu")),
        preset=flags.get("preset"),
        levers=levers,
        preset_notes=tuple(notes),
        loras=tuple(loras),
        parallel=parallel,
    )
