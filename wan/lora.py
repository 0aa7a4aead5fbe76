"""LoRAs on either expert, fused into the weights so a step costs what the base model's does.

Users download LoRAs in several namings; each file is recognised by its keys, converted to
diffusers naming with diffusers' own converters (those of ``WanLoraLoaderMixin.lora_state_dict``),
injected with the expert's ``load_lora_adapter`` (peft), fused with ``fuse_lora`` and the peft
layers removed again, so sampling runs plain ``nn.Linear`` layers. This module is applied to a
loaded ``WanT2V`` from outside; the denoising loop knows nothing of LoRAs.

What is new here and not in diffusers: recognising the naming up front, refusing a file before
the model loads (missing, corrupt, image-to-video, or made for another model: its layers and shapes
are checked against the checkpoint's expert configs, read without loading a weight), and refusing a
LoRA any of whose layers the expert lacks, since a LoRA that lands partly is the "garbage video"
users report.

Step-distill LoRAs ship as a pair, one per expert, in one folder: Wan2.2-Lightning names them
``high_noise_model.safetensors`` / ``low_noise_model.safetensors``, LightX2V
``wan2.2_t2v_A14b_high_noise_lora_rank64_lightx2v_4step_1217.safetensors`` and its ``low_noise`` twin
(and ComfyUI repacks ``..._HIGH_fp16`` / ``..._LOW_fp16``). ``--lora_dir DIR[:SCALE]`` finds the pair
by the word high or low in the names, case-insensitive, and puts each file on its expert.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from wan.config import HIGH, LOW, TaskConfig
from wan.errors import ConfigError

if TYPE_CHECKING:
    from diffusers import WanTransformer3DModel

logger = logging.getLogger(__name__)

BOTH = (HIGH, LOW)
FLAG_EXPERTS: dict[str, tuple[str, ...]] = {"lora": BOTH, "lora_high": (HIGH,), "lora_low": (LOW,)}
"""The CLI flags (argparse dests, batch item keys) and the experts each applies to."""
DIR_FLAG = "lora_dir"
"""``--lora_dir DIR[:SCALE]``: a distill pair's folder, each file on the expert its name says."""
DISTILL_PRESETS = ("lightning",)
"""Presets that sample a step-distilled schedule, which the base experts were never trained for."""
TASK_KINDS = ("t2v", "i2v", "ti2v", "flf2v", "s2v", "animate")
"""Task words in release file names (LightX2V's folder holds t2v and i2v pairs side by side)."""
EXPERT_FOLDERS = {
    "diffusers": {HIGH: "transformer", LOW: "transformer_2"},
    "official": {HIGH: "high_noise_model", LOW: "low_noise_model"},
}
"""Where each expert's config.json lives, per checkpoint layout."""

METADATA_KEY = "lora_adapter_metadata"  # diffusers' LoraConfig record in a safetensors header
I2V_MARKERS = ("k_img", "v_img", "img_emb", "add_k_proj", "add_v_proj", "image_embedder")
"""Key parts only image-to-video Wan models have; a LoRA with them was trained for another model."""
WAN_NAMES = re.compile(
    r"^(blocks\.\d+\.(self_attn|cross_attn|ffn\.\d)|head\.|time_embedding|text_embedding|time_projection)"
)
DIFFUSERS_NAMES = re.compile(r"^(blocks\.\d+\.(attn1|attn2|ffn\.net)|condition_embedder\.|proj_out\.)")
EXPERT_IN_NAME = re.compile(r"(?<![a-z])(high|low)(?![a-z])", re.IGNORECASE)
LORA_SUFFIX = re.compile(r"\.(lora_A\.weight|lora_B\.weight|lora_B\.bias)$")


@dataclass(frozen=True)
class LoraSpec:
    """One ``--lora*`` flag: a file, its strength, and the experts it goes on."""

    path: Path
    scale: float
    experts: tuple[str, ...]


@dataclass(frozen=True)
class LoraFile:
    """A LoRA file checked before the model loads: its naming, size and content hash."""

    spec: LoraSpec
    format: str  # "diffusers", "wan" (official / ComfyUI / kohya) or "musubi"
    sha256: str
    pairs: int  # LoRA layers (lora_A/lora_B pairs) after conversion
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()  # each converted key's shape: checked before loading


def parse_lora_arg(value: str) -> tuple[Path, float]:
    """``FILE[:SCALE]`` -> (path, scale); a colon whose tail is not a number belongs to the path."""
    head, sep, tail = value.rpartition(":")
    if sep and head:
        try:
            return Path(head), float(tail)
        except ValueError:
            pass
    return Path(value), 1.0


def lora_specs(flags: dict[str, Any], config: TaskConfig | None = None) -> list[LoraSpec]:
    """The LoRAs that ``--lora_dir``, ``--lora``, ``--lora_high`` and ``--lora_low`` (each a value, a list or
    None) ask for, in that order; ``flags["task"]``, where given, picks a pair out of a folder holding several.

    With ``config``, a one-model task (TI2V-5B) takes ``--lora`` on its one model, and the flags that pick one
    of two experts are refused in one line rather than failing at fusing time.
    """
    specs = []
    for value in _as_list(flags.get(DIR_FLAG)):
        folder, scale = parse_lora_arg(value)
        if not math.isfinite(scale):
            raise ConfigError(f"--{DIR_FLAG} {value}: the scale must be a finite number")
        specs.extend(lora_dir_specs(folder, scale, task=flags.get("task")))
    for flag, on in FLAG_EXPERTS.items():
        for value in _as_list(flags.get(flag)):
            path, scale = parse_lora_arg(value)
            if not math.isfinite(scale):
                raise ConfigError(f"--{flag} {value}: the scale must be a finite number")
            specs.append(LoraSpec(path, scale, on))
    return specs if config is None or config.experts == 2 else _on_one_model(specs, config.task)


def _on_one_model(specs: list[LoraSpec], task: str) -> list[LoraSpec]:
    """The specs of a one-model task: each on that model (filed as the high-noise expert, as its loader does)."""
    picked = [spec for spec in specs if spec.experts != BOTH]
    if picked:
        raise ConfigError(
            f"task {task} has one model, not a high- and a low-noise expert: give {picked[0].path.name} "
            "with --lora (--lora_high, --lora_low and --lora_dir are for the two-expert A14B tasks)"
        )
    return [LoraSpec(spec.path, spec.scale, (HIGH,)) for spec in specs]


def _as_list(value: str | list[str] | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def named_expert(path: Path) -> str | None:
    """The expert a file's name says it is for (``high`` / ``low`` as a word, any case), or None."""
    said = {m.lower() for m in EXPERT_IN_NAME.findall(path.stem)}
    if len(said) != 1:
        return None
    return HIGH if said == {"high"} else LOW


def lora_dir_specs(folder: Path, scale: float = 1.0, task: str | None = None) -> list[LoraSpec]:
    """The high-noise and the low-noise LoRA of a release folder, each on its expert.

    Files are ``*.safetensors`` in the folder, or one folder down (LightX2V's ``loras/high_noise_model/``).
    Where several pairs are there (t2v and i2v, or two dates), the task word in ``task`` picks the files that
    carry it; anything still ambiguous is refused with the names, so the user picks with ``--lora_high/low``.
    """
    flag = f"--{DIR_FLAG} {folder}"
    if not folder.is_dir():
        raise ConfigError(f"{flag}: not a folder; give the folder holding the high- and low-noise LoRA files")
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*/*.safetensors"))
    by_expert: dict[str, list[Path]] = {HIGH: [], LOW: []}
    for path in files:
        expert = named_expert(path) or (named_expert(path.parent) if path.parent != folder else None)
        if expert is not None:
            by_expert[expert].append(path)
    kind = _task_kind(task)
    specs = []
    for expert in BOTH:
        found = by_expert[expert]
        if len(found) > 1 and kind is not None:
            found = [p for p in found if _task_kind(str(p.relative_to(folder))) == kind] or found
        word = "high" if expert == HIGH else "low"
        if not found:
            shown = ", ".join(p.name for p in files[:6]) or "no .safetensors file"
            raise ConfigError(
                f"{flag}: no {word}-noise LoRA (a .safetensors file with '{word}' in its name) among: {shown}; "
                f"pass the files with --lora_high and --lora_low"
            )
        if len(found) > 1:
            raise ConfigError(
                f"{flag}: {len(found)} {word}-noise LoRAs ({', '.join(p.name for p in found[:4])}); "
                f"pick one with --lora_{word} FILE"
            )
        specs.append(LoraSpec(found[0], scale, (expert,)))
    return specs


def _task_kind(text: str | None) -> str | None:
    """``t2v``, ``i2v``, ... as a word of a task name or file name (``t2v-A14B``, ``wan2.2_i2v_A14b_...``)."""
    if not text:
        return None
    words = set(re.split(r"[^a-z0-9]+", Path(text).name.lower() if text.endswith(".json") else text.lower()))
    return next((k for k in TASK_KINDS if k in words), None)


def warn_if_distilled_without_loras(preset: str | None, specs: Sequence[LoraSpec]) -> None:
    """A distill preset samples 4 steps without CFG: on the base experts alone that is a blurred video."""
    if preset in DISTILL_PRESETS and not specs:
        logger.warning(
            "--preset %s samples the step-distilled schedule but no LoRA is given; pass the distill pair with "
            "--lora_dir DIR (or --lora_high/--lora_low), else the base experts make a blurred 4-step video",
            preset,
        )


def check_loras(specs: Sequence[LoraSpec], ckpt_dir: Path | None = None) -> list[LoraFile]:
    """Read, recognise and convert every file; ``ConfigError`` names the bad one.

    With ``ckpt_dir`` every file is also checked against the checkpoint's expert configs (its layers and
    shapes, on weightless experts), so a LoRA for another model fails before the model loads.
    """
    for spec in specs:
        _warn_if_named_for_the_other_expert(spec)
    files = [_check_cached(spec, *_file_stamp(spec.path)) for spec in specs]
    if ckpt_dir is not None and files:
        experts = _meta_experts(Path(ckpt_dir))
        if experts is not None:
            for f in files:
                for expert_name in f.spec.experts:
                    if expert_name in experts:
                        check_targets(dict(f.shapes), experts[expert_name], f.spec.path, expert_name)
    return files


def _meta_experts(ckpt_dir: Path) -> dict[str, torch.nn.Module] | None:
    """The checkpoint's experts (one or two) built from its configs on the meta device (no weights), or None
    where the folder's layout is not recognised (the loader then names what is wrong)."""
    from diffusers import WanTransformer3DModel

    from wan.checkpoints import detect_layout, transformer_config_from_wan

    try:
        layout = detect_layout(ckpt_dir)
        folders = {name: ckpt_dir / folder for name, folder in EXPERT_FOLDERS[layout].items()}
        if not (folders[HIGH] / "config.json").is_file():  # a one-model release (TI2V-5B) keeps it at the top
            folders = {HIGH: ckpt_dir}
        experts = {}
        for expert_name, folder in folders.items():
            if expert_name == LOW and not (folder / "config.json").is_file():
                continue  # a one-model diffusers layout has no transformer_2
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            if layout == "official":
                config = transformer_config_from_wan(config)
            with torch.device("meta"):
                experts[expert_name] = WanTransformer3DModel.from_config(config)
        return experts
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.debug("LoRA check against %s skipped: %s", ckpt_dir, exc)
        return None


def _warn_if_named_for_the_other_expert(spec: LoraSpec) -> None:
    """Distillation LoRAs come in pairs named ``..._high_noise`` / ``..._low_noise`` (or HIGH/LOW); one on
    the wrong expert is the "garbage video" users report, so a name that disagrees with the flag is flagged."""
    named = named_expert(spec.path)
    if named is None:
        return
    if any(expert != named for expert in spec.experts):
        flag = "--lora_high" if named == HIGH else "--lora_low"
        logger.warning(
            "LoRA %s is named for the %s expert but goes on %s; meant %s?",
            spec.path.name,
            named,
            " and ".join(spec.experts),
            flag,
        )


def lora_record(files: Iterable[LoraFile]) -> dict[str, list[dict[str, Any]]]:
    """What the sidecar keeps: per expert, each LoRA's file name, sha256 and scale, in fusing order."""
    record: dict[str, list[dict[str, Any]]] = {HIGH: [], LOW: []}
    for f in files:
        for expert in f.spec.experts:
            record[expert].append({"file": f.spec.path.name, "sha256": f.sha256, "scale": f.spec.scale})
    return record


def apply_loras(pipe, files: Sequence[LoraFile]) -> None:  # pipe: a loaded wan.text2video.WanT2V
    """Fuse every LoRA into its experts, in order; afterwards the experts hold plain weights again.

    Every file is checked against its experts before any is fused, so a refused set leaves the
    model as loaded. Fusing runs on the pipeline's device (an offloaded expert visits it for the
    duration), so a 14B expert's layers merge on the GPU instead of the CPU.
    """
    loaded = [(f, *read_lora(f.spec.path)) for f in files]
    for f, state_dict, _ in loaded:
        shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
        for expert_name in f.spec.experts:
            check_targets(shapes, pipe.experts[expert_name], f.spec.path, expert_name)
    for number, (f, state_dict, metadata) in enumerate(loaded):
        for expert_name in f.spec.experts:
            expert = pipe.experts[expert_name]
            home = next(expert.parameters()).device
            expert.to(pipe.device)
            try:
                fuse_lora(expert, state_dict, metadata, f.spec.scale, f"lora{number}")
            finally:
                expert.to(home)
            logger.info(
                "fused %s (%s naming, %d layers, scale %g) into the %s expert",
                f.spec.path.name,
                f.format,
                f.pairs,
                f.spec.scale,
                expert_name,
            )


def fuse_lora(
    expert: WanTransformer3DModel,
    state_dict: dict[str, torch.Tensor],
    metadata: dict[str, Any] | None,
    scale: float,
    adapter_name: str,
) -> None:
    """Inject one adapter with peft, merge it at ``scale`` and remove the peft layers."""
    expert.load_lora_adapter(
        dict(state_dict), prefix="transformer", adapter_name=adapter_name, metadata=metadata, low_cpu_mem_usage=True
    )
    expert.fuse_lora(lora_scale=scale, adapter_names=[adapter_name])
    expert.unload_lora()


def read_lora(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The file's LoRA in diffusers naming (``transformer.<module>.lora_A.weight``) and its adapter metadata."""
    state_dict, metadata, _ = _read_converted(path)
    return state_dict, metadata


def check_targets(shapes: dict[str, tuple[int, ...]], expert: torch.nn.Module, path: Path, expert_name: str) -> None:
    """Every LoRA key (name -> shape) must land on a linear layer of the expert with matching shapes, or nothing
    is fused. The expert may be weightless (meta device): only its layers' sizes are read."""
    modules = dict(expert.named_modules())
    for key, shape in shapes.items():
        module_name = LORA_SUFFIX.sub("", key.removeprefix("transformer."))
        module = modules.get(module_name)
        if not isinstance(module, torch.nn.Linear):
            raise ConfigError(f"LoRA {path}: key {key} matches no layer of the {expert_name} expert; wrong model?")
        expected = {
            "lora_A.weight": (None, module.in_features),
            "lora_B.weight": (module.out_features, None),
            "lora_B.bias": (module.out_features,),
        }[LORA_SUFFIX.search(key).group(1)]
        if len(expected) != len(shape) or any(e is not None and e != s for e, s in zip(expected, shape, strict=True)):
            raise ConfigError(
                f"LoRA {path}: key {key} has shape {tuple(shape)} but the {expert_name} expert's "
                f"{module_name} is {module.out_features}x{module.in_features}; a LoRA for another model size?"
            )


# ----------------------------------------------------------------------------------- reading
def _file_stamp(path: Path) -> tuple[str, int, int]:
    try:
        stat = path.stat()
    except OSError as exc:
        raise ConfigError(f"LoRA file {path} cannot be read ({exc.strerror or exc})") from exc
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=64)
def _check_cached(spec: LoraSpec, resolved: str, mtime_ns: int, size: int) -> LoraFile:
    """A batch names the same files in many items: read and hash each once per version of the file."""
    state_dict, _, fmt = _read_converted(spec.path)
    with open(spec.path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    shapes = tuple((k, tuple(v.shape)) for k, v in state_dict.items())
    return LoraFile(spec, fmt, digest, sum(k.endswith("lora_A.weight") for k in state_dict), shapes)


def _read_converted(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, str]:
    """Load, recognise the naming, refuse other architectures, convert to diffusers naming."""
    from diffusers.loaders.lora_pipeline import WanLoraLoaderMixin

    if path.suffix != ".safetensors":
        raise ConfigError(f"LoRA file {path} is not a .safetensors file (pickled .pt/.ckpt LoRAs are not loaded)")
    try:
        with safe_open(path, framework="pt") as handle:
            header = handle.metadata() or {}
        tensors = load_file(path)
    except FileNotFoundError as exc:
        raise ConfigError(f"LoRA file {path} does not exist") from exc
    except (OSError, SafetensorError, ValueError) as exc:
        raise ConfigError(f"LoRA file {path} is not a readable safetensors file: {str(exc).splitlines()[0]}") from exc
    if not tensors:
        raise ConfigError(f"LoRA file {path} holds no tensors")
    foreign = next((k for k in tensors if any(m in k for m in I2V_MARKERS)), None)
    if foreign is not None:
        raise ConfigError(f"LoRA {path} is for an image-to-video model (key {foreign}); this engine is text-to-video")
    fmt, tensors = _normalise(path, tensors)
    try:
        converted = WanLoraLoaderMixin.lora_state_dict(tensors)
    except (ValueError, KeyError, IndexError, RuntimeError) as exc:
        raise ConfigError(f"LoRA {path} ({fmt} naming) could not be converted: {_first_line(exc)}") from exc
    if not converted:
        raise ConfigError(f"LoRA {path} has no LoRA layers diffusers can apply (keys like {next(iter(tensors))})")
    stray = next((k for k in converted if not k.startswith("transformer.") or not LORA_SUFFIX.search(k)), None)
    if stray is not None:
        raise ConfigError(f"LoRA {path}: key {stray} is not a LoRA layer (lora_A/lora_B) of a transformer")
    try:
        metadata = json.loads(header[METADATA_KEY]) if METADATA_KEY in header else None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"LoRA {path}: its {METADATA_KEY} header is not JSON ({exc.msg})") from exc
    return converted, metadata, fmt


def _normalise(path: Path, tensors: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """Name the file's naming and give it the prefix diffusers' converters expect."""
    keys = list(tensors)
    if all(k.startswith("base_model.model.") for k in keys):  # saved by peft's PeftModel
        tensors = {k.removeprefix("base_model.model."): v for k, v in tensors.items()}
    elif all(k.startswith("model.diffusion_model.") for k in keys):
        tensors = {k.removeprefix("model."): v for k, v in tensors.items()}
    first = next(iter(tensors))
    if all(k.startswith("transformer.") for k in tensors):
        return "diffusers", tensors
    if all(k.startswith("diffusion_model.") for k in tensors):
        _warn_dropped_diffs(path, tensors)
        return "wan", tensors
    if all(k.startswith("lora_unet_") for k in tensors):
        return "musubi", tensors
    if all(WAN_NAMES.match(k) for k in tensors):
        _warn_dropped_diffs(path, tensors)
        return "wan", {f"diffusion_model.{k}": v for k, v in tensors.items()}
    if all(DIFFUSERS_NAMES.match(k) for k in tensors):
        return "diffusers", {f"transformer.{k}": v for k, v in tensors.items()}
    unknown = next(
        (k for k in tensors if not (WAN_NAMES.match(k) or DIFFUSERS_NAMES.match(k) or k.startswith("transformer."))),
        first,
    )
    raise ConfigError(f"LoRA {path}: key {unknown} is in no LoRA naming known here (diffusers, Wan/ComfyUI, musubi)")


def _warn_dropped_diffs(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Full-weight ``.diff`` keys are skipped by diffusers' converter (``.diff_b`` biases are applied)."""
    diffs = [k for k in tensors if k.endswith(".diff") and "norm" not in k and not k.endswith("head.head.diff")]
    if diffs:
        logger.warning("LoRA %s: %d full-weight .diff keys (e.g. %s) are not applied", path.name, len(diffs), diffs[0])


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
