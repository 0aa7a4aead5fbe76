"""WanT2V: Wan2.2 text-to-video with two experts, half-frame generation and CFG truncation.

The loop in ``WanT2V.sample`` is the product: each step is routed to the high-noise or the
low-noise expert by its timestep (``wan.guidance``); with half-frame generation a window of
high-noise steps runs on half the latent frames, and the loop calls ``wan.half_frame.transition``
wherever the plan's frame count changes. The experts are diffusers ``WanTransformer3DModel``s,
which derive sequence length and the RoPE grid from each input's shape, so a transition needs no
model state to change: only the latent and the solver history.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from wan.checkpoints import WanComponents, load_components
from wan.config import ConfigError, TaskConfig
from wan.frames import latent_frame_count, predict_x0
from wan.guidance import HIGH, LOW, StepPlan, apply_cfg, plan_steps
from wan.half_frame import HalfFramePlan, transition
from wan.placement import Placement, Resident, apply_placement
from wan.prompt import clean_prompt
from wan.settings import GenerationSettings
from wan.solvers import make_scheduler, step_sigmas

logger = logging.getLogger(__name__)


class NonFiniteLatentError(RuntimeError):
    """NaN or Inf appeared in the latent; names the step and the expert that produced it."""

    def __init__(self, step: int, expert: str):
        super().__init__(f"NaN/Inf in the latent at step {step} ({expert} expert); try another seed or dtype")
        self.step = step
        self.expert = expert


@dataclass
class GenerationResult:
    video: torch.Tensor  # [3, F, H, W], float32 in [-1, 1], on the CPU (empty after ``sample`` alone)
    latents: torch.Tensor  # [1, C, T, h, w], float32, on the CPU
    settings: GenerationSettings
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    forwards: dict[str, int] = field(default_factory=dict)  # DiT forwards per expert
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


def call_expert(
    expert, branch: str, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, plan: StepPlan
) -> torch.Tensor:
    """One DiT forward inside diffusers' cache context, so caching hooks keep cond and uncond apart.

    The context is also keyed by the frame count: a cache must not mix half-frame and full-frame states.
    """
    with expert.cache_context(
        f"{branch}_{latents.shape[2]}",
        step_index=plan.index,
        timestep=plan.timestep,
        sigma=plan.sigma,
        num_inference_steps=plan.steps,
    ):
        return expert(hidden_states=latents, timestep=timestep, encoder_hidden_states=context, return_dict=False)[0]


def guided_velocity(
    expert,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    plan: StepPlan,
    cond_context: torch.Tensor,
    uncond_context: torch.Tensor,
) -> torch.Tensor:
    """A step's velocity: the conditional pass and, on CFG steps, the unconditional one combined."""
    velocity = call_expert(expert, "cond", latents, timestep, cond_context, plan)
    if plan.use_cfg:
        uncond = call_expert(expert, "uncond", latents, timestep, uncond_context, plan)
        velocity = apply_cfg(velocity.float(), uncond.float(), plan.guide_scale).to(velocity.dtype)
    return velocity


class WanT2V:
    """Loaded Wan2.2 T2V model: text encoder, VAE and the two experts, plus the sampling loop."""

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
        self.parts = components
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.t5_cpu = t5_cpu
        self.experts = {HIGH: components.high_noise_model, LOW: components.low_noise_model}
        for module in (components.text_encoder, components.vae, *self.experts.values()):
            if module is not None:
                module.eval().requires_grad_(False)
        self.text_device = torch.device("cpu") if t5_cpu else self.device
        self._check_parts()
        self.velocity: VelocityFn = guided_velocity
        """One step's model output; a lever (CFG parallel) may replace it."""
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

    def _check_parts(self) -> None:
        """Refuse expert pairs that cannot share a latent or a text embedding."""
        high, low = (e.config for e in self.experts.values())
        for key in ("in_channels", "out_channels", "patch_size", "text_dim"):
            if tuple(_as_tuple(high[key])) != tuple(_as_tuple(low[key])):
                raise ConfigError(f"the experts disagree on {key}: {high[key]} vs {low[key]}; check the checkpoint")
        if self.parts.text_encoder is None or self.parts.vae is None:
            return  # sample() alone, on given embeddings (benchmarks)
        text_dim = self.parts.text_encoder.config.d_model
        if high["text_dim"] != text_dim:
            raise ConfigError(
                f"the experts expect text_dim {high['text_dim']} but the text encoder gives {text_dim}; "
                "check the checkpoint's text_encoder"
            )
        if high["in_channels"] != self.parts.vae.config.z_dim:
            raise ConfigError(
                f"the experts take {high['in_channels']} latent channels but the VAE has z_dim "
                f"{self.parts.vae.config.z_dim}; check the checkpoint's VAE"
            )

    # ----------------------------------------------------------------------------------- text
    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """umT5 embeddings [B, text_len, dim], rows past each prompt's tokens set to zero."""
        texts = [clean_prompt(t) for t in texts]
        for text in texts:
            self._warn_if_cut(text)
        with self.placement.using(self.parts.text_encoder, self.text_device):
            hidden = encode_prompts(self.parts.tokenizer, self.parts.text_encoder, texts, self.config.text_len)
        return hidden.to(self.device)

    def _warn_if_cut(self, text: str) -> None:
        """The text encoder reads ``text_len`` tokens; say so when a prompt is longer, rather than cut it silently."""
        count = len(self.parts.tokenizer(text, add_special_tokens=True).input_ids)
        if count > self.config.text_len:
            logger.warning(
                "prompt %r is %d tokens, longer than the text encoder's window of %d: it is cut to the first %d",
                text[:60] + ("..." if len(text) > 60 else ""),
                count,
                self.config.text_len,
                self.config.text_len,
            )

    # ----------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(
        self,
        settings: GenerationSettings,
        *,
        progress: bool = True,
        on_step: Callable[[StepPlan, torch.Tensor], None] | None = None,
    ) -> GenerationResult:
        """Text -> video. ``on_step(plan, latents)`` is called after every step (tests, batch tools)."""
        s = settings.resolved(self.config)
        timings: dict[str, float] = {}
        with self._stage(timings, "text_encoding"):
            context = self.encode_text([s.prompt, s.negative_prompt])
        result = self.sample(s, context[:1], context[1:], progress=progress, on_step=on_step)
        with self._stage(timings, "vae_decode"):
            result.video = self.decode(result.latents.to(self.device)).cpu()
        result.timings = {**timings, **result.timings}
        return result

    @torch.no_grad()
    def sample(
        self,
        settings: GenerationSettings,
        cond_context: torch.Tensor,
        uncond_context: torch.Tensor,
        *,
        progress: bool = True,
        on_step: Callable[[StepPlan, torch.Tensor], None] | None = None,
    ) -> GenerationResult:
        """The denoising loop on given text embeddings [1, text_len, dim]; returns latents, no video."""
        s = settings.resolved(self.config)
        for expert in self.experts.values():  # step caches (wan.levers.cache) start empty for every video
            expert._reset_stateful_cache()
        timings: dict[str, float] = {}
        width, height = self.config.parse_size(s.size)
        stride_t, stride_h, stride_w = self.config.vae_stride
        patch = _as_tuple(self.experts[HIGH].config.patch_size)
        if height % (stride_h * patch[1]) or width % (stride_w * patch[2]):
            raise ConfigError(
                f"size {s.size} must be a multiple of {stride_w * patch[2]} in width and "
                f"{stride_h * patch[1]} in height"
            )
        full_frames = latent_frame_count(s.frame_num, stride_t)
        tokens_per_frame = (height // stride_h // patch[1]) * (width // stride_w // patch[2])
        transformer_dtype = self.experts[HIGH].dtype
        cond_ctx = cond_context.to(self.device, transformer_dtype)
        uncond_ctx = uncond_context.to(self.device, transformer_dtype)

        # All noise comes from the seed up front at full frame count; a half-frame latent is its frames
        # 0, 2, 4, ... so the x0 transitions can re-noise with the baseline's own noise.
        generator = torch.Generator(device="cpu").manual_seed(s.seed)
        shape = (1, self.experts[HIGH].config.in_channels, full_frames, height // stride_h, width // stride_w)
        noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)

        scheduler = make_scheduler(s.sample_solver, s.sample_shift, self.config.num_train_timesteps)
        scheduler.set_timesteps(s.sample_steps, device=self.device)
        scheduler.set_begin_index(0)
        sigmas = step_sigmas(scheduler)
        plans = plan_steps(
            scheduler.timesteps.tolist(),
            boundary=self.config.boundary,
            guide_scale_high=s.guide_scale_high,
            guide_scale_low=s.guide_scale_low,
            num_train_timesteps=self.config.num_train_timesteps,
            cfg_truncate_steps=s.cfg_truncate_steps,
            cfg_truncate_high_noise_steps=s.cfg_truncate_high_noise_steps,
            sigmas=sigmas,
        )
        frames_plan = HalfFramePlan.build(
            s.half_frame_steps if s.half_frame else None,
            [p.expert for p in plans],
            full_frames,
            s.frame_completion,
            s.half_frame_positions,
        )

        forwards = {HIGH: 0, LOW: 0}
        tokens = {HIGH: 0, LOW: 0}
        seconds = {HIGH: 0.0, LOW: 0.0, "completion": 0.0}
        latents, x0_estimate = noise, None
        bar = tqdm(plans, desc="denoising", unit="step", disable=not progress, dynamic_ncols=True)
        for plan in bar:
            frames = frames_plan.frames(plan.index)
            if frames != latents.shape[2]:
                start = self._now()
                latents = transition(
                    frames_plan,
                    latents,
                    frames,
                    x0=x0_estimate,
                    sigma=sigmas[plan.index],
                    noise=noise,
                    scheduler=scheduler,
                    generator=generator,
                )
                seconds["completion"] += self._now() - start
            start = self._now()
            expert = self.placement.expert(self, plan.expert)
            bar.set_postfix(expert=plan.expert, frames=frames, tokens=frames * tokens_per_frame, cfg=plan.use_cfg)
            model_input = latents.to(transformer_dtype)
            timestep = torch.full((1,), plan.timestep, device=self.device)
            with frames_plan.positions_for(expert, plan.index):
                velocity = self.velocity(expert, model_input, timestep, plan, cond_ctx, uncond_ctx)
            forwards[plan.expert] += plan.forwards
            tokens[plan.expert] += plan.forwards * frames * tokens_per_frame
            x0_estimate = predict_x0(latents, velocity.float(), sigmas[plan.index])
            latents = scheduler.step(velocity, scheduler.timesteps[plan.index], latents, return_dict=False)[0]
            if not torch.isfinite(latents).all():
                raise NonFiniteLatentError(plan.index, plan.expert)
            seconds[plan.expert] += self._now() - start
            if on_step is not None:
                on_step(plan, latents)
        bar.close()
        timings["high_noise"], timings["low_noise"] = seconds[HIGH], seconds[LOW]
        if s.half_frame:
            timings["completion"] = seconds["completion"]

        return GenerationResult(
            video=torch.empty(0),
            latents=latents.float().cpu(),
            settings=s,
            timings=timings,
            forwards=forwards,
            tokens=tokens,
            high_noise_steps=sum(p.expert == HIGH for p in plans),
            low_noise_steps=sum(p.expert == LOW for p in plans),
        )

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent -> video [3, F, H, W] in [-1, 1]; undoes the VAE's per-channel latent normalisation."""
        vae = self.parts.vae
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
