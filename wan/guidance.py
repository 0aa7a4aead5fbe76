"""Classifier-free guidance: one step's velocity from the conditional and unconditional passes.

Which steps run the unconditional pass at all, and at which scale, is the plan's (``wan.plan``);
this module runs the passes a step asks for. A lever may replace ``guided_velocity`` on the
pipeline (CFG parallel runs the two passes on two groups of GPUs) without touching the loop.
"""

from __future__ import annotations

import torch

from wan.plan import StepPlan


def apply_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + g (cond - uncond)."""
    return uncond + scale * (cond - uncond)


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
