"""Model parts at their real size with random weights: time does not depend on weight values.

Every part is made directly on the device in its load dtype (two A14B experts are 2 x 28.6 GB in
bf16: there is no room for a CPU copy), with the fp32 modules ``from_pretrained(torch_dtype=...)``
keeps, so kernels and casts are those of a loaded checkpoint. ``RandomParts`` holds one set of them
for a benchmark run and rebuilds the experts (same seeds, same weights) after a mode changed them.
``TASK_PARTS`` says what each task is made of: T2V-A14B and I2V-A14B (two experts, 16 or 36 input
channels, the Wan2.1 VAE), TI2V-5B (one dense expert, the Wan2.2 VAE).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors.torch import save_file
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

from wan.checkpoints.keymaps import WAN22_VAE_LATENTS_MEAN, WAN22_VAE_LATENTS_STD
from wan.config import HIGH, LOW

logger = logging.getLogger("benchmarks")

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "models" / "t2v-tiny" / "tokenizer"
"""umT5's tokenizer subset shipped with t2v-tiny: its ids are valid in umT5-XXL's 256384."""
A14B_CONFIG: dict[str, Any] = {  # one Wan2.2-A14B expert (diffusers' WanTransformer3DModel arguments)
    "patch_size": (1, 2, 2),
    "num_attention_heads": 40,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 13824,
    "num_layers": 40,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
}
TI2V_5B_CONFIG: dict[str, Any] = {  # TI2V-5B's one dense expert: 48 latent channels in and out
    **A14B_CONFIG,
    "num_attention_heads": 24,
    "in_channels": 48,
    "out_channels": 48,
    "ffn_dim": 14336,
    "num_layers": 30,
}
WAN22_VAE: dict[str, Any] = {  # the Wan2.2 VAE (z 48, 4x16x16: a 2x2 patchify around a 4x8x8 VAE)
    "base_dim": 160,
    "decoder_base_dim": 256,
    "z_dim": 48,
    "is_residual": True,
    "in_channels": 12,
    "out_channels": 12,
    "patch_size": 2,
    "scale_factor_temporal": 4,
    "scale_factor_spatial": 16,
    "latents_mean": list(WAN22_VAE_LATENTS_MEAN),
    "latents_std": list(WAN22_VAE_LATENTS_STD),
}
TINY_OVERRIDES: dict[str, Any] = {
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 48,
}
"""Toy dims of an expert for a CPU check of a benchmark (``--tiny``)."""
UMT5_XXL: dict[str, Any] = {  # google/umt5-xxl's encoder, as Wan2.2 uses it
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "vocab_size": 256384,
    "feed_forward_proj": "gated-gelu",  # transformers derives dense_act_fn="gelu_new", is_gated_act=True
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.0,
}
TINY_UMT5: dict[str, Any] = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 4}
TINY_VAE: dict[str, Any] = {"base_dim": 8, "num_res_blocks": 1}
TINY_WAN22_VAE: dict[str, Any] = {**WAN22_VAE, "base_dim": 8, "decoder_base_dim": 12, "num_res_blocks": 1}
TEXT_TOKENS = 512
"""umT5's padded prompt length in Wan2.2: every cross-attention sees 512 text tokens."""


@dataclass(frozen=True)
class TaskParts:
    """What one task's model is made of: the expert config, how many experts, the VAE config."""

    expert: dict[str, Any]
    experts: tuple[str, ...] = (HIGH, LOW)
    vae: dict[str, Any] = field(default_factory=dict)  # {}: diffusers' default, the Wan2.1 VAE
    tiny_vae: dict[str, Any] = field(default_factory=lambda: dict(TINY_VAE))


TASK_PARTS: dict[str, TaskParts] = {
    "t2v-A14B": TaskParts(A14B_CONFIG),
    "i2v-A14B": TaskParts({**A14B_CONFIG, "in_channels": 36}),  # noise 16 + mask 4 + image latent 16
    "ti2v-5B": TaskParts(TI2V_5B_CONFIG, (HIGH,), WAN22_VAE, TINY_WAN22_VAE),
}


def expert_config(
    tiny: bool, layers: int | None, tiny_overrides: dict[str, Any] = TINY_OVERRIDES, task: str = "t2v-A14B"
) -> dict[str, Any]:
    """The task's expert config, toy-sized with ``tiny``; ``layers`` blocks (default the release's, 2 when tiny)."""
    base = TASK_PARTS[task].expert
    config = dict(base, **(tiny_overrides if tiny else {}))
    config["num_layers"] = layers if layers is not None else (2 if tiny else base["num_layers"])
    return config


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def keep_fp32_modules(model: torch.nn.Module) -> None:
    """Make ``_keep_in_fp32_modules`` parameters fp32, the rule ``from_pretrained(torch_dtype=...)`` applies."""
    keep = model._keep_in_fp32_modules or []
    for name, param in model.named_parameters():
        if any(part in keep for part in name.split(".")):
            param.data = param.data.float()


def text_embeddings(rows: int, dim: int, device: torch.device, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """[1, 512, dim] like umT5's output: ``rows`` random rows, zeros past the prompt's length."""
    generator = torch.Generator().manual_seed(seed)
    embeds = torch.zeros(1, TEXT_TOKENS, dim)
    embeds[:, :rows] = torch.randn(1, rows, dim, generator=generator)
    return embeds.to(device, dtype)


def build_expert(config: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int, std: float):
    """A random expert made on ``device`` in ``dtype``: weight matrices N(0, std), fp32 modules kept fp32."""
    torch.manual_seed(seed)
    with torch.device(device), default_dtype(dtype):
        model = WanTransformer3DModel(**config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2 and not name.endswith("scale_shift_table"):
                param.normal_(0.0, std)
        keep_fp32_modules(model)
    return model.eval().requires_grad_(False)


def build_text_encoder(config: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int):
    """A random umT5 encoder made on ``device`` (transformers' own init), ``wo`` kept fp32 as a bf16 load does."""
    torch.manual_seed(seed)
    with torch.device(device), default_dtype(dtype):
        model = UMT5EncoderModel(UMT5Config(**config))
    with torch.no_grad():
        keep_fp32_modules(model)
    return model.eval().requires_grad_(False)


def build_vae(config: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int) -> AutoencoderKLWan:
    """A random Wan VAE made on ``device`` (``{}``: diffusers' default config, the Wan2.1 VAE)."""
    torch.manual_seed(seed)
    with torch.device(device), default_dtype(dtype):
        model = AutoencoderKLWan(**config)
    return model.eval().requires_grad_(False)


WAN_LAYERS = {
    "self_attn.q": "inner",
    "self_attn.k": "inner",
    "self_attn.v": "inner",
    "self_attn.o": "inner",
    "cross_attn.q": "inner",
    "cross_attn.k": "inner",
    "cross_attn.v": "inner",
    "cross_attn.o": "inner",
    "ffn.0": "up",
    "ffn.2": "down",
}
"""Every projection of a block by its official name, and its shape kind (inner: dim x dim)."""


def random_wan_lora(config: dict[str, Any], rank: int, dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    """A rank-``rank`` LoRA on every block projection, in the official-Wan naming with alpha = rank."""
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    shapes = {"inner": (dim, dim), "up": (config["ffn_dim"], dim), "down": (dim, config["ffn_dim"])}
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for block in range(config["num_layers"]):
        for name, kind in WAN_LAYERS.items():
            out_features, in_features = shapes[kind]
            prefix = f"diffusion_model.blocks.{block}.{name}"
            down = torch.randn(rank, in_features, generator=generator) * 0.01
            tensors[f"{prefix}.lora_down.weight"] = down.to(dtype)
            up = torch.randn(out_features, rank, generator=generator) * 0.01
            tensors[f"{prefix}.lora_up.weight"] = up.to(dtype)
            tensors[f"{prefix}.alpha"] = torch.tensor(float(rank))
    return tensors


LIGHTNING_FILES = {HIGH: "high_noise_model.safetensors", LOW: "low_noise_model.safetensors"}
"""A distill pair's file names as Wan2.2-Lightning ships them (``--lora_dir`` reads the expert from the name)."""


def write_lora_pair(folder: Path, config: dict[str, Any], rank: int, dtype: torch.dtype) -> Path:
    """A random rank-``rank`` LoRA for each expert, named and laid out like a released distill pair."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (expert, name) in enumerate(LIGHTNING_FILES.items()):
        save_file(random_wan_lora(config, rank, dtype, seed=10 + seed), str(folder / name))
        logger.info("wrote a random rank-%d LoRA for the %s expert: %s", rank, expert, folder / name)
    return folder


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class RandomParts:
    """Tokenizer, text encoder, VAE and the experts of one benchmark run, all made on the device.

    The experts are rebuilt (same seeds: the same weights) by ``rebuild_experts`` when a mode left
    levers on them; ``reset_shared`` undoes what a mode did to the parts every mode shares.
    """

    def __init__(
        self,
        tokenizer: Any,
        model_config: dict[str, Any],
        text_config: dict[str, Any],
        vae_config: dict[str, Any],
        device: torch.device,
        dtype: torch.dtype,
        vae_dtype: torch.dtype,
        init_std: float,
        expert_names: tuple[str, ...] = (HIGH, LOW),
        *,
        vae_tiling: bool = False,
    ):
        self.model_config, self.text_config, self.expert_names = model_config, text_config, expert_names
        self.device, self.dtype, self.vae_dtype, self.init_std = device, dtype, vae_dtype, init_std
        self.tokenizer = tokenizer
        self.text_encoder = build_text_encoder(text_config, device, dtype, 2)
        self.vae = build_vae(vae_config, device, vae_dtype, 3)
        self.experts: dict[str, torch.nn.Module] = {}
        self.vae_tiling = vae_tiling  # the whole run's: every mode, the peers too, decodes in tiles
        self.rebuild_experts()

    @classmethod
    def for_task(
        cls,
        task: str,
        *,
        tiny: bool,
        layers: int | None,
        device,
        dtype,
        vae_dtype,
        init_std: float,
        vae_tiling: bool = False,
    ) -> RandomParts:
        """The task's parts (umT5-XXL, its VAE, its experts, ``TASK_PARTS``); toy dims of each with ``tiny``."""
        spec = TASK_PARTS[task]
        tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
        model_config = expert_config(tiny, layers, task=task)
        text_config = dict(UMT5_XXL, **(TINY_UMT5 if tiny else {}))
        if tiny:
            text_config.update(d_model=model_config["text_dim"], vocab_size=len(tokenizer))
        vae_config = spec.tiny_vae if tiny else spec.vae
        return cls(
            tokenizer,
            model_config,
            text_config,
            vae_config,
            device,
            dtype,
            vae_dtype,
            init_std,
            spec.experts,
            vae_tiling=vae_tiling,
        )

    def rebuild_experts(self) -> None:
        self.experts = {}  # the old experts go before the new ones are made: both pairs may not fit
        self.experts = {
            name: build_expert(self.model_config, self.device, self.dtype, seed, self.init_std)
            for seed, name in enumerate(self.expert_names)
        }

    def modules(self) -> list[torch.nn.Module]:
        return [self.text_encoder, self.vae, *self.experts.values()]

    def reset_shared(self) -> None:
        """Undo what a mode before this one did to the shared parts: VAE tiling (back to the run's) and precision,
        attention backends."""
        if self.vae_tiling:
            self.vae.enable_tiling()
        else:
            self.vae.disable_tiling()
        self.vae.to(dtype=self.vae_dtype)
        for expert in self.experts.values():
            expert.reset_attention_backend()

    def params(self) -> dict[str, int]:
        return {
            "experts": len(self.experts),
            "per_expert": parameter_count(self.experts[HIGH]),
            "text_encoder": parameter_count(self.text_encoder),
            "vae": parameter_count(self.vae),
        }
