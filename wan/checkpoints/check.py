"""What a checkpoint folder holds, from configs and file headers only, and whether it fits a task.

``describe_checkpoint`` finds the layout, the experts, their channels and the VAE's latent channels
without reading a weight (configs, safetensors headers, the VAE file's tensor shapes through a
memory map), and refuses missing, corrupt and mutually incompatible parts. ``check_checkpoint`` then
compares that with what a task needs, so a T2V checkpoint given to an image-to-video task, a 5B VAE
next to an A14B expert, or two experts for a one-model task fail with one line in a second or two.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from wan.checkpoints.files import (
    has_safetensors,
    read_json,
    read_safetensors,
    require_dir,
    require_file,
    torch_load,
)
from wan.checkpoints.names import (
    DIFFUSERS_EXPERTS,
    OFFICIAL_EXPERTS,
    OFFICIAL_T5,
    OFFICIAL_TOKENIZER,
    OFFICIAL_VAE,
    OFFICIAL_VAE_22,
    ROOT,
    TEXT_ENCODER_STEM,
    WAN22_VAE_Z_DIM,
    WEIGHTS_STEM,
)
from wan.errors import CheckpointError

logger = logging.getLogger(__name__)

MASK_CHANNELS = 4  # image-to-video: one mask channel per frame of a 4-frame latent step


@dataclass(frozen=True)
class ExpectedModel:
    """What a task needs from a checkpoint (``wan.options.expected_model``; the releases: ``RELEASED_MODELS``).

    ``experts``: 2 for the A14B mixtures of experts (high-noise then low-noise), 1 for a dense model.
    ``in_channels``: the transformer's input channels: the VAE's ``z_dim`` for text-to-video and for
    TI2V (its image replaces the first latent frame), ``2 * z_dim + 4`` for I2V (noise + mask + image latent).
    ``vae_z_dim``: the VAE's latent channels: 16 (Wan2.1 VAE) or 48 (Wan2.2 VAE).
    ``release``: where to get a fitting checkpoint, named in the fix (the official repository's name).
    """

    task: str
    experts: int
    in_channels: int
    vae_z_dim: int
    release: str


RELEASED_MODELS = {
    "t2v-A14B": ExpectedModel("t2v-A14B", experts=2, in_channels=16, vae_z_dim=16, release="Wan-AI/Wan2.2-T2V-A14B"),
    "i2v-A14B": ExpectedModel("i2v-A14B", experts=2, in_channels=36, vae_z_dim=16, release="Wan-AI/Wan2.2-I2V-A14B"),
    "ti2v-5B": ExpectedModel("ti2v-5B", experts=1, in_channels=48, vae_z_dim=48, release="Wan-AI/Wan2.2-TI2V-5B"),
}
"""The released tasks' models (facts of the official configs and diffusers' conversions)."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint folder holds; paths are relative to it (``"."`` is the folder itself)."""

    root: Path
    layout: str  # "official" or "diffusers"
    experts: tuple[str, ...]  # expert folders, high-noise first
    in_channels: int
    out_channels: int
    vae: str  # the VAE's file (official) or folder (diffusers)
    vae_z_dim: int

    @property
    def release(self) -> str:
        """The official repository this checkpoint looks like, for the fix of an error."""
        if len(self.experts) == 1:
            name = "Wan-AI/Wan2.2-TI2V-5B"
        elif self.in_channels == self.out_channels:
            name = "Wan-AI/Wan2.2-T2V-A14B"
        else:
            name = "Wan-AI/Wan2.2-I2V-A14B"
        return name + ("-Diffusers" if self.layout == "diffusers" else "")


def _kind(in_channels: int, latent_channels: int) -> str:
    """A transformer's input, named by how it relates to the latent it denoises."""
    if in_channels == latent_channels:
        return "text-to-video: the noisy latent only"
    if in_channels == 2 * latent_channels + MASK_CHANNELS:
        return f"image-to-video: {latent_channels} noise + {MASK_CHANNELS} mask + {latent_channels} image latent"
    return f"for {latent_channels}-channel latents"


def _listing(root: Path) -> str:
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    return ", ".join(found[:10]) + (", ..." if len(found) > 10 else "") if found else "nothing"


def detect_layout(ckpt_dir: Path) -> str:
    """``"official"`` or ``"diffusers"``, from the files present (a diffusers ``model_index.json`` wins)."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        raise CheckpointError(
            f"checkpoint folder {root} does not exist: download a Wan2.2 checkpoint (e.g. Wan-AI/Wan2.2-T2V-A14B "
            "or its -Diffusers version) and pass its folder"
        )
    is_diffusers = (root / "model_index.json").is_file() or (root / DIFFUSERS_EXPERTS[0]).is_dir()
    is_official = any((root / n).is_dir() for n in OFFICIAL_EXPERTS) or any(root.glob(f"{WEIGHTS_STEM}*.safetensors*"))
    if is_diffusers:
        if is_official:
            logger.warning("%s holds both layouts; using the diffusers one (model_index.json)", root)
        return "diffusers"
    if is_official:
        return "official"
    raise CheckpointError(
        f"{root} is not a Wan2.2 checkpoint: expected high_noise_model/ and low_noise_model/, or a model's "
        "config.json with diffusion_pytorch_model*.safetensors (official layout), or model_index.json with "
        f"transformer/ and transformer_2/ (diffusers layout), found {_listing(root)}: point --ckpt_dir at the "
        "downloaded folder"
    )


def _official_experts(root: Path) -> tuple[str, ...]:
    if any((root / n).is_dir() for n in OFFICIAL_EXPERTS):
        for name in OFFICIAL_EXPERTS:
            require_dir(root / name, f"re-download {name}/: a two-expert checkpoint needs both experts")
        return OFFICIAL_EXPERTS
    return (ROOT,)


def _diffusers_experts(root: Path) -> tuple[str, ...]:
    index_path = root / "model_index.json"
    index = read_json(index_path, "re-download model_index.json") if index_path.is_file() else {}
    if (index.get("image_encoder") or [None])[0] is not None:
        raise CheckpointError(
            f"{root} has an image_encoder (CLIP), as Wan2.1 image-to-video checkpoints do; Wan2.2 models have none: "
            "pass a Wan2.2 checkpoint with --ckpt_dir"
        )
    first, second = DIFFUSERS_EXPERTS
    if (index.get(second) or [None])[0] is not None:
        require_dir(root / second, f"re-download {second}/ (model_index.json lists it)")
    return (first, second) if (root / second).is_dir() else (first,)


def _expert_channels(root: Path, layout: str, name: str) -> tuple[int, int]:
    """(in, out) channels of one expert from its config.json, after a read of its safetensors headers."""
    folder = root / name
    where = "the checkpoint folder" if name == ROOT else f"{name}/"
    fix = f"re-download {where}"
    require_dir(folder, fix)
    config = read_json(folder / "config.json", fix)
    infos = read_safetensors(folder, WEIGHTS_STEM, fix)  # a truncated or missing shard fails here
    keys = ("in_dim", "out_dim") if layout == "official" else ("in_channels", "out_channels")
    clip = "img_emb." if layout == "official" else "condition_embedder.image_embedder."
    if any(k.startswith(clip) for k in infos) or config.get("image_dim"):
        raise CheckpointError(
            f"{folder} has a CLIP image embedding, as Wan2.1 image-to-video models do; Wan2.2 models have none: "
            "pass a Wan2.2 checkpoint with --ckpt_dir"
        )
    try:
        return int(config[keys[0]]), int(config[keys[1]])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{folder / 'config.json'} has no usable {exc.args[0]!r}: {fix}") from exc


def _official_vae(root: Path, out_channels: int) -> tuple[str, int]:
    """The VAE file that belongs with experts of ``out_channels`` latent channels, and its z_dim."""
    wanted, other = (
        (OFFICIAL_VAE_22, OFFICIAL_VAE) if out_channels == WAN22_VAE_Z_DIM else (OFFICIAL_VAE, OFFICIAL_VAE_22)
    )
    if not (root / wanted).is_file() and (root / other).is_file():
        raise CheckpointError(
            f"{root} has {other} but no {wanted}, and its experts take {out_channels} latent channels, which "
            f"{other} does not give: put the VAE of the same release ({wanted}) in the folder"
        )
    state_dict = torch_load(root / wanted, f"re-download {wanted}")  # memory-mapped: shapes, no weights read
    weight = state_dict.get("conv1.weight")
    if weight is None:
        raise CheckpointError(f"{root / wanted}: tensor conv1.weight is missing: re-download {wanted}")
    return wanted, int(weight.shape[0]) // 2


def _diffusers_vae(root: Path) -> tuple[str, int]:
    config = read_json(root / "vae" / "config.json", "re-download vae/")
    read_safetensors(root / "vae", WEIGHTS_STEM, "re-download vae/")
    return "vae/", int(config.get("z_dim", 16))


def _require_parts(root: Path, layout: str, experts: tuple[str, ...]) -> None:
    """Every part present (before any file is read, so the first message names a missing part)."""
    for name in experts:
        require_dir(root / name, f"re-download {name}/")
    if layout == "official":  # the VAE file depends on the experts' channels: checked with them
        require_file(root / OFFICIAL_T5, f"re-download {OFFICIAL_T5}")
        require_dir(root / OFFICIAL_TOKENIZER, f"re-download {OFFICIAL_TOKENIZER}/")
        return
    for name in ("vae", "text_encoder", "tokenizer"):
        require_dir(root / name, f"re-download {name}/")


def describe_checkpoint(ckpt_dir: str | Path) -> CheckpointInfo:
    """Layout, experts, channels and VAE of a checkpoint, refusing missing, corrupt or mismatched parts."""
    root = Path(ckpt_dir)
    layout = detect_layout(root)
    experts = _official_experts(root) if layout == "official" else _diffusers_experts(root)
    _require_parts(root, layout, experts)
    channels = [_expert_channels(root, layout, name) for name in experts]
    if len(set(channels)) > 1:
        (in_a, out_a), (in_b, out_b) = channels[0], channels[-1]
        raise CheckpointError(
            f"{root}: the experts disagree: {experts[0]}/ takes {in_a} channels in and {out_a} out, {experts[-1]}/ "
            f"{in_b} and {out_b}: both experts must come from the same release"
        )
    in_channels, out_channels = channels[0]
    vae, z_dim = _official_vae(root, out_channels) if layout == "official" else _diffusers_vae(root)
    if z_dim != out_channels:
        family = "Wan2.2" if z_dim == WAN22_VAE_Z_DIM else "Wan2.1"
        raise CheckpointError(
            f"{root}: the VAE {vae} has {z_dim} latent channels ({family} VAE) but the experts denoise "
            f"{out_channels}-channel latents: use the VAE of the experts' release"
        )
    if layout == "diffusers" and has_safetensors(root / "text_encoder", TEXT_ENCODER_STEM):
        read_safetensors(root / "text_encoder", TEXT_ENCODER_STEM, "re-download text_encoder/")
    return CheckpointInfo(root, layout, experts, in_channels, out_channels, vae, z_dim)


def check_checkpoint(ckpt_dir: str | Path, expected: ExpectedModel) -> CheckpointInfo:
    """Refuse a checkpoint that cannot run ``expected.task`` (one line each), before any weights load."""
    info = describe_checkpoint(ckpt_dir)
    fix = f"pass a checkpoint of {expected.release} (official or diffusers layout) with --ckpt_dir"
    if len(info.experts) != expected.experts:
        folders = "the model at its root" if info.experts == (ROOT,) else ", ".join(e + "/" for e in info.experts)
        found = "two experts" if len(info.experts) == 2 else "one dense model"
        wanted = "two experts (high-noise and low-noise)" if expected.experts == 2 else "one dense model"
        raise CheckpointError(f"{info.root} holds {found} ({folders}) but task {expected.task} runs {wanted}: {fix}")
    if info.in_channels != expected.in_channels:
        raise CheckpointError(
            f"{info.root}: its transformer takes {info.in_channels} input channels "
            f"({_kind(info.in_channels, info.out_channels)}) but task {expected.task} needs {expected.in_channels} "
            f"({_kind(expected.in_channels, expected.vae_z_dim)}): {fix}"
        )
    if info.vae_z_dim != expected.vae_z_dim:
        raise CheckpointError(
            f"{info.root}: its VAE has {info.vae_z_dim} latent channels but task {expected.task} needs "
            f"{expected.vae_z_dim}: {fix}"
        )
    return info
