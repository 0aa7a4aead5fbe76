"""A request body -> a job the worker can run, checked by the same rules as a batch prompt-file line.

The body takes the keys of a JSON prompt-file line (``wan.batch.ITEM_FLAGS``) less ``save_file`` (the
server names every file) and ``lora_dir``, plus ``preset``. LoRAs are named by file name within the
server's LoRA folder, an image by the id of its upload (``wan.service.images``): a client never reaches
the file system with a path of its own. Every refusal is a ``ConfigError`` whose message is the line
the CLI prints after ``error:`` (or, for what only the service has, says what to send instead).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wan.batch.prompt_file import GENERATION_FLAGS, ITEM_ALIASES, item_flags
from wan.config import TaskConfig
from wan.errors import ConfigError
from wan.levers.presets import PRESETS, preset_generation_defaults
from wan.lora import FLAG_EXPERTS, check_loras, lora_specs, parse_lora_arg
from wan.plan import video_size
from wan.service.images import ImageStore
from wan.settings import GenerationSettings, settings_from_flags
from wan.validation import SEED_MAX

LORA_SUFFIX = ".safetensors"
PATH_KEYS = ("lora_dir",)
"""Item keys that name a file: never taken from a client (LoRAs are named within the server's folder, an
image by its upload's id)."""
REQUEST_KEYS = ("prompt", "seed", *(k for k in GENERATION_FLAGS if k not in ("prompt", *PATH_KEYS)), "preset")
"""Keys a request body may hold."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""

    max_body_bytes: int = 64 * 1024
    max_image_bytes: int = 20 * 2**20  # an uploaded image
    max_prompt_chars: int = 2000
    max_queue: int = 100  # queued jobs (not counting the one running)


@dataclass
class JobSpec:
    """A validated request: what is stored, and later run, for it."""

    request: dict[str, Any]  # the body's flags as given (LoRAs by name), for the API's answers
    settings: GenerationSettings  # resolved: no None field, seed drawn if the body had none
    engine: dict[str, Any] = field(default_factory=dict)  # model flags that differ per job: preset, LoRA files


class RequestParser:
    """Checks bodies against the task, the server's own flags (every item's defaults), its LoRA folder and
    its uploaded images."""

    def __init__(
        self,
        server_flags: Mapping[str, Any],
        config: TaskConfig,
        lora_dir: Path | None,
        limits: Limits,
        images: ImageStore,
    ):
        self.defaults = {name: server_flags.get(name) for name in GENERATION_FLAGS}
        self.preset = server_flags.get("preset")
        self.server_loras = {flag: server_flags.get(flag) for flag in FLAG_EXPERTS}
        self.config = config
        self.lora_dir = lora_dir
        self.limits = limits
        self.images = images

    def lora_names(self) -> list[str]:
        """The LoRA files a request may name: ``*.safetensors`` directly in the server's folder."""
        if self.lora_dir is None or not self.lora_dir.is_dir():
            return []
        return sorted(p.name for p in self.lora_dir.iterdir() if p.suffix == LORA_SUFFIX and p.is_file())

    def parse_body(self, body: bytes) -> JobSpec:
        """The raw body (already size-limited by the route) -> a job."""
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"the body is not valid JSON ({getattr(exc, 'msg', exc)}); send a JSON object") from exc
        return self.parse(data)

    def parse(self, data: Any) -> JobSpec:
        """A decoded body -> a job, or ``ConfigError`` naming the first problem."""
        if not isinstance(data, dict):
            raise ConfigError(f"the body must be a JSON object with a 'prompt', got {type(data).__name__}")
        unknown = [key for key in data if key not in REQUEST_KEYS]
        if "save_file" in unknown:
            raise ConfigError("'save_file': the server names every file; leave it out")
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r}; requests take: {', '.join(REQUEST_KEYS)}")
        preset = data.get("preset", self.preset)
        if preset is not None and (not isinstance(preset, str) or preset not in PRESETS):
            raise ConfigError(f"unknown preset {json.dumps(preset)}; choose one of: {', '.join(PRESETS)} (or null)")
        flags = item_flags({k: v for k, v in data.items() if k != "preset"})
        prompt = flags.get("prompt")
        if prompt is None:
            raise ConfigError("'prompt' is missing; give the text of the video")
        if len(prompt) > self.limits.max_prompt_chars:
            raise ConfigError(
                f"the prompt has {len(prompt)} characters; this server takes at most {self.limits.max_prompt_chars}"
            )
        engine = {"preset": preset, **self.server_loras}
        for flag in FLAG_EXPERTS:
            if flag in flags:
                engine[flag] = flags[flag] = [self._lora_file(flag, value) for value in flags[flag]]
        # a corrupt or foreign file is refused now, not when its job runs
        check_loras(lora_specs(engine, self.config))
        if "image" in flags:
            flags["image"] = str(self.images.path(flags["image"]))
        merged = dict(self.defaults)
        for name, value in preset_generation_defaults(preset).items():
            if merged[name] is None:
                merged[name] = value
        merged.update(flags)
        seed = merged["base_seed"]
        if seed is None or seed < 0:
            seed = random.randint(0, SEED_MAX)  # drawn once and stored: a resumed job makes the same video
        settings = settings_from_flags(merged, seed).resolved(self.config)
        self._check_image(settings)
        request = {ITEM_ALIASES.get(k, k): v for k, v in data.items() if v is not None}
        return JobSpec(request=request, settings=settings, engine=engine)

    def _check_image(self, settings: GenerationSettings) -> None:
        """An image task's image is there and can frame a video of this size: refused now, not when the job runs."""
        if self.config.kind == "i2v" and settings.image is None:
            raise ConfigError(
                f"task {self.config.task} makes a video from an image; upload it (POST /v1/images) and pass "
                "its id as 'image'"
            )
        if settings.image is not None:
            video_size(self.config, settings)  # e.g. an image too narrow for the size

    def _lora_file(self, flag: str, value: str) -> str:
        """``NAME[:SCALE]`` -> the file in the LoRA folder, as the CLI's flag takes it; names only, no paths."""
        path, scale = parse_lora_arg(value)
        name = str(path)
        if not name.endswith(LORA_SUFFIX):
            name += LORA_SUFFIX
        choices = self.lora_names()
        if name not in choices:
            offered = ", ".join(n.removesuffix(LORA_SUFFIX) for n in choices) or "none"
            raise ConfigError(f"{flag!r}: no LoRA named {str(path)!r} on this server; choose one of: {offered}")
        return f"{self.lora_dir / name}:{scale}"
