"""WanT2V: Wan2.2 text-to-video with two experts, half-frame generation and CFG truncation.

The loop in ``WanT2V.sample`` is the product. It follows a ``wan.plan.RunPlan`` made once before
anything loads: each step names its expert (the timestep router), its guidance and its latent frame
count; with half-frame generation the high-noise steps run on half the latent frames, and the loop
calls ``wan.half_frame.transition`` wherever the plan's frame count changes. What a task adds to
each step (an image's latent and mask) comes from a ``wan.conditioning`` object. The experts are
diffusers ``WanTransformer3DModel``s, which derive sequence length and the RoPE grid from each input's
shape, so a transition needs no model state to change: only the latent and the solver history.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from wan.checkpoints import WanComponents, load_components
from wan.conditioning import Conditioning, TextOnly
from wan.config import HIGH, LOW, TaskConfig
from wan.errors import ConfigError, NonFiniteLatentError
from wan.frames import predict_x0
from wan.guidance import guided_velocity
from wan.half_frame import transition
from wan.placement import Placement, Resident, apply_placement
from wan.plan import RunPlan, StepPlan, build_plan
from wan.prompt import clean_prompt
from wan.settings import GenerationSettings
from wan.solvers import make_scheduler

logger = logging.getLogger(__name__)


@dataclass
class GenerationResult:
    video: torch.Tensor  # [3, F, H, W], float32 in [-1, 1], on the CPU (empty after ``sample`` alone)
    latents: torch.Tensor  # [1, C, T, h, w], float32, on the CPU
    settings: GenerationSettings
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    forwards: dict[str, int] = field(default_factory=dict)  # DiT forwards per expert
    computed_forwards: dict[str, int] = field(default_factory=dict)  # of those, what a step cache computed
    tokens: dict[str, int] = field(default_factory=dict)  # tokens processed per expert, summed over forwards
    high_noise_steps: int = 0
    low_noise_steps: int = 0


def encode_prompts(tokenizer, text_encoder, texts: list[str], text_len: int) -> torch.Tensor:
    """[B, text_len, dim] as Wan's pipeline makes them: padded to ``text_len``, masked encoder, pad rows zeroed.

    Shared with the tiny model's training, so the experts learn on exactly the embeddings they get.
    """
    batch = tokenizer(
        texts,
        padding="max_length",
        max_length=text_len,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    device = next(text_encoder.parameters()).device
    ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
    hidden = text_encoder(ids, mask).last_hidden_state
    return hidden * mask.unsqueeze(-1).to(hidden.dtype)


VelocityFn = Callable[..., torch.Tensor]


class WanT2V:
    """Loaded Wan2.2 model: text encoder, VAE and the experts (two for the A14B tasks, one for TI2V-5B), plus
    the sampling loop. A task's image conditioning comes from ``wan.tasks``; the loop is the same for all."""

    def __init__(
        self,
        config: TaskConfig,
        components: WanComponents,
        *,
        device: str | torch.device = "cpu",
        placement: Placement | None = None,
        t5_cpu: bool = False,
    ):
        self.config = config
        self.components = components
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.t5_cpu = t5_cpu
        experts = {HIGH: components.high_noise_model, LOW: components.low_noise_model}
        self.experts = {name: expert for name, expert in experts.items() if expert is not None}
        for module in (components.text_encoder, components.vae, *self.experts.values()):
            if module is not None:
                module.eval().requires_grad_(False)
        self.text_device = torch.device("cpu") if t5_cpu else self.device
        self._check_components()
        self.velocity: VelocityFn = guided_velocity
        """One step's model output; a strategy (CFG parallel) may replace it."""
        self.ckpt_dir: Path | None = None  # where the weights came from (per-checkpoint calibrations live there)
        self.placement: Placement = Placement()
        apply_placement(self, placement or Resident(keep_text_encoder=True))

    @classmethod
    def from_pretrained(
        cls,
        config: TaskConfig,
        ckpt_dir: str | Path,
        *,
        device: str | torch.device = "cpu",
        convert_model_dtype: bool = False,
        placement: Placement | None = None,
        t5_cpu: bool = False,
    ) -> WanT2V:
        """Load a checkpoint (official or diffusers layout); bf16 experts with ``convert_model_dtype``.

        Otherwise the weights keep their stored dtype on a GPU and become float32 on the CPU.
        """
        if convert_model_dtype:
            dtype = torch.bfloat16
        elif torch.device(device).type == "cpu":
            dtype = torch.float32  # CPUs have no fast half-precision kernels: fp16 weights run ~10x slower
        else:
            dtype = None  # as stored
        components = load_components(ckpt_dir, transformer_dtype=dtype, text_encoder_dtype=dtype)
        pipe = cls(config, components, device=device, placement=placement, t5_cpu=t5_cpu)
        pipe.ckpt_dir = Path(ckpt_dir)
        return pipe

    def _check_components(self) -> None:
        """Refuse parts that cannot share a latent or a text embedding, or that do not fit the task."""
        if len(self.experts) != self.config.experts:
            raise ConfigError(
                f"task {self.config.task} runs {self.config.experts} expert(s) but the checkpoint has "
                f"{len(self.experts)}; check --task and --ckpt_dir"
            )
        high = self.experts[HIGH].config
        for other in list(self.experts.values())[1:]:
            for key in ("in_channels", "out_channels", "patch_size", "text_dim"):
                if tuple(_as_tuple(high[key])) != tuple(_as_tuple(other.config[key])):
                    raise ConfigError(
                        f"the experts disagree on {key}: {high[key]} vs {other.config[key]}; check the checkpoint"
                    )
        if self.components.text_encoder is None or self.components.vae is None:
            return  # sample() alone, on given embeddings (benchmarks)
        text_dim = self.components.text_encoder.config.d_model
        if high["text_dim"] != text_dim:
            raise ConfigError(
                f"the experts expect text_dim {high['text_dim']} but the text encoder gives {text_dim}; "
                "check the checkpoint's text_encoder"
            )
        z_dim = self.components.vae.config.z_dim
        if high["out_channels"] != z_dim:
            raise ConfigError(
                f"the experts make {high['out_channels']} latent channels but the VAE has z_dim {z_dim}; "
                "check the checkpoint's VAE"
            )
        expected = z_dim + (4 + z_dim if self.config.kind == "i2v" else 0)  # i2v: + mask and image latent
        if high["in_channels"] != expected:
            raise ConfigError(
                f"task {self.config.task} feeds the experts {expected} input channels but the checkpoint's take "
                f"{high['in_channels']}; check --task (a text-to-video checkpoint for an image task?)"
            )

    # ----------------------------------------------------------------------------------- text
    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """umT5 embeddings [B, text_len, dim], rows past each prompt's tokens set to zero."""
        texts = [clean_prompt(t) for t in texts]
        for text in texts:
            self._warn_if_cut(text)
        parts = self.components
        with self.placement.using(parts.text_encoder, self.text_device):
            hidden = encode_prompts(parts.tokenizer, parts.text_encoder, texts, self.config.text_len)
        return hidden.to(self.device)

    def _warn_if_cut(self, text: str) -> None:
        """The text encoder reads ``text_len`` tokens; say so when a prompt is longer, rather than cut it silently."""
        count = len(self.components.tokenizer(text, add_special_tokens=True).input_ids)
        if count > self.config.text_len:
            logger.warning(
                "prompt %r is %d tokens, longer than the text encoder's window of %d: it is cut to the first %d",
                text[:60] + ("..." if len(text) > 60 else ""),
                count,
                self.config.text_len,
                self.config.text_len,
            )

    # ----------------------------------------------------------------------------------- sampling
    def plan(self, settings: GenerationSettings | RunPlan) -> RunPlan:
        """The run plan of ``settings`` under this task and the checkpoint's patch size (``wan.plan``); a plan
        made for them passes through as it is."""
        patch = tuple(_as_tuple(self.experts[HIGH].config.patch_size))
        if isinstance(settings, RunPlan):
            if settings.geometry.patch_size == patch:
                return settings
            settings = settings.settings
        return build_plan(settings, dataclasses.replace(self.config, patch_size=patch))

    @torch.no_grad()
    def generate(
        self,
        settings: GenerationSettings | RunPlan,
        *,
        conditioning: Conditioning | None = None,
        progress: bool = True,
        on_step: Callable[[StepPlan, torch.Tensor], None] | None = None,
        decode: bool = True,
    ) -> GenerationResult:
        """Text -> video. ``on_step(step, latents)`` is called after every step (progress, tests);
        ``decode`` False leaves the video empty (the ranks of a multi-GPU run other than the first)."""
        plan = self.plan(settings)
        timings: dict[str, float] = {}
        with self._stage(timings, "text_encoding"):
            context = self.encode_text([plan.settings.prompt, plan.settings.negative_prompt])
        if conditioning is None and self.config.kind != "t2v":
            with self._stage(timings, "image_encoding"):
                conditioning = self.conditioning(plan)
        result = self.sample(
            plan, context[:1], context[1:], conditioning=conditioning, progress=progress, on_step=on_step
        )
        if decode:
            with self._stage(timings, "vae_decode"):
                result.video = self.decode(result.latents.to(self.device)).cpu()
        result.timings = {**timings, **result.timings}
        return result

    @torch.no_grad()
    def conditioning(self, plan: RunPlan) -> Conditioning:
        """What an image task adds to every step: the image, encoded by the VAE (``wan.tasks``)."""
        s = plan.settings
        from wan.image import frame_image, image_tensor, load_image
        from wan.tasks import prepare_conditioning

        width, height = plan.geometry.pixels
        pixels = None
        if s.image is not None:
            pixels = image_tensor(frame_image(self.config, load_image(s.image), width, height), width, height)
        vae = self.components.vae
        with self.placement.using(vae, self.device):
            return prepare_conditioning(
                self.config.kind,
                vae,
                pixels,
                frames=s.frame_num,
                height=height,
                width=width,
                device=self.device,
                patch_size=plan.geometry.patch_size,
            )

    @torch.no_grad()
    def sample(
        self,
        settings: GenerationSettings | RunPlan,
        cond_context: torch.Tensor,
        uncond_context: torch.Tensor,
        *,
        conditioning: Conditioning | None = None,
        progress: bool = True,
        on_step: Callable[[StepPlan, torch.Tensor], None] | None = None,
    ) -> GenerationResult:
        """The denoising loop on given text embeddings [1, text_len, dim]; returns latents, no video."""
        plan = self.plan(settings)
        for expert in self.experts.values():  # step caches (wan.levers.cache) start empty for every video
            expert._reset_stateful_cache()
        s, shape = plan.settings, plan.geometry
        condition = conditioning or TextOnly()
        transformer_dtype = self.experts[HIGH].dtype
        cond_ctx = cond_context.to(self.device, transformer_dtype)
        uncond_ctx = uncond_context.to(self.device, transformer_dtype)

        # All noise comes from the seed up front at full frame count; a half-frame latent is its frames
        # 0, 2, 4, ... so the x0 transitions can re-noise with the baseline's own noise.
        generator = torch.Generator(device="cpu").manual_seed(s.seed)
        channels = self.experts[HIGH].config.out_channels
        noise_shape = (1, channels, shape.frames, shape.height, shape.width)
        noise = torch.randn(noise_shape, generator=generator, dtype=torch.float32).to(self.device)
        scheduler = make_scheduler(s.sample_solver, s.sample_shift, self.config.num_train_timesteps)
        scheduler.set_timesteps(s.sample_steps, device=self.device)
        scheduler.set_begin_index(0)

        seconds = {HIGH: 0.0, LOW: 0.0, "completion": 0.0}
        latents, x0_estimate = noise, None
        bar = tqdm(plan.steps, desc="denoising", unit="step", disable=not progress, dynamic_ncols=True)
        for step in bar:
            frames = plan.step_frames(step.index)
            if frames != latents.shape[2]:
                start = self._now()
                latents = transition(
                    plan.frames,
                    latents,
                    frames,
                    x0=x0_estimate,
                    sigma=plan.sigmas[step.index],
                    noise=noise,
                    scheduler=scheduler,
                    generator=generator,
                )
                condition = condition.at_frames(frames)
                seconds["completion"] += self._now() - start
            start = self._now()
            expert = self.placement.expert(self, step.expert)
            bar.set_postfix(expert=step.expert, frames=frames, tokens=plan.step_tokens(step.index), cfg=step.use_cfg)
            model_input = condition.model_input(latents).to(transformer_dtype)
            timestep = condition.timestep(step.timestep, latents)
            with plan.frames.positions_for(expert, step.index):
                velocity = self.velocity(expert, model_input, timestep, step, cond_ctx, uncond_ctx)
            x0_estimate = predict_x0(latents, velocity.float(), plan.sigmas[step.index])
            latents = scheduler.step(velocity, scheduler.timesteps[step.index], latents, return_dict=False)[0]
            latents = condition.after_step(latents)
            if not torch.isfinite(latents).all():
                raise NonFiniteLatentError(step.index, step.expert)
            seconds[step.expert] += self._now() - start
            if on_step is not None:
                on_step(step, latents)
        bar.close()
        timings = {name: seconds[name] for name in self.experts}
        if s.half_frame:
            timings["completion"] = seconds["completion"]

        return GenerationResult(
            video=torch.empty(0),
            latents=latents.float().cpu(),
            settings=s,
            timings=timings,
            forwards=plan.forwards(),
            tokens=plan.tokens(),
            high_noise_steps=plan.expert_steps(HIGH),
            low_noise_steps=plan.expert_steps(LOW),
        )

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent -> video [3, F, H, W] in [-1, 1]; undoes the VAE's per-channel latent normalisation."""
        vae = self.components.vae
        with self.placement.using(vae, self.device):
            z = latents.to(self.device, torch.float32)  # denormalised in float32 whatever the VAE's dtype
            mean = torch.tensor(vae.config.latents_mean, device=z.device).view(1, -1, 1, 1, 1)
            inv_std = 1.0 / torch.tensor(vae.config.latents_std, device=z.device).view(1, -1, 1, 1, 1)
            video = vae.decode((z / inv_std + mean).to(vae.dtype), return_dict=False)[0]
        return video[0].float().clamp(-1, 1)

    # ----------------------------------------------------------------------------------- timing
    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @contextmanager
    def _stage(self, timings: dict[str, float], name: str):
        start = self._now()
        yield
        timings[name] = timings.get(name, 0.0) + self._now() - start


def _as_tuple(value) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)
