"""CFG parallel: the conditional and unconditional passes of a CFG step at the same time on two halves of the ranks.

The ranks form a (cfg, ring, ulysses) = (2, 1, U) mesh: CFG group 0 runs the conditional pass and
group 1 the unconditional one, each with diffusers' Ulysses over its own U ranks; one
``all_gather`` over the two ranks of a pair then gives every rank both velocities, and every rank
applies CFG itself, so the latents stay identical everywhere (as in the one-process loop).

Steps that skip the unconditional pass (CFG truncation, guide scale <= 1) would leave one group
idle; instead the experts switch to Ulysses over all ranks for them, so the conditional pass is
split 2U ways. Where the step's token count or the heads do not divide by the world size, both
groups compute the conditional pass redundantly with their own Ulysses (correct, half as fast).

The switch moves diffusers' context-parallel hooks and attention processors between two
``ParallelConfig``s (``apply_context_parallel`` / ``remove_context_parallel``), only when the
config changes: a run with truncation switches twice per truncated stretch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from wan.guidance import apply_cfg, call_expert
from wan.plan import StepPlan

COND, UNCOND = 0, 1
"""CFG-group index of the conditional and the unconditional pass (the group's coordinate on the "cfg" mesh dim)."""


def use_parallel_config(expert: torch.nn.Module, config) -> None:
    """Make ``config`` (a diffusers ``ParallelConfig``, or None: no context parallel) the expert's active one.

    Re-registers the expert's ``_cp_plan`` hooks for ``config`` and points its attention processors at
    it; nothing happens when it is already active. Run on every rank in the same order (collectives).
    """
    from diffusers.hooks.context_parallel import apply_context_parallel, remove_context_parallel

    if expert._parallel_config is config:
        return
    if expert._parallel_config is not None:
        remove_context_parallel(expert, expert._cp_plan)
    for module in expert.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_parallel_config"):
            processor._parallel_config = config
    if config is not None:
        apply_context_parallel(expert, config.context_parallel_config, expert._cp_plan)
    expert._parallel_config = config


@dataclass
class CfgParallelVelocity:
    """``WanT2V.velocity`` under CFG parallel (see the module docstring); install with ``pipe.velocity = ...``.

    ``group_config``: Ulysses within this rank's CFG group (None when a group is one rank);
    ``world_config``: Ulysses over all ranks for cond-only steps (None when the heads do not divide).
    """

    pair: dist.ProcessGroup  # this rank and its partner in the other CFG group
    cfg_rank: int  # COND or UNCOND
    world_size: int
    group_config: object | None
    world_config: object | None

    def __call__(
        self,
        expert,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        plan: StepPlan,
        cond_context: torch.Tensor,
        uncond_context: torch.Tensor,
    ) -> torch.Tensor:
        if not plan.use_cfg:
            use_parallel_config(expert, self.cond_only_config(expert, latents))
            return call_expert(expert, "cond", latents, timestep, cond_context, plan)
        use_parallel_config(expert, self.group_config)
        if self.cfg_rank == COND:
            mine = call_expert(expert, "cond", latents, timestep, cond_context, plan)
        else:
            mine = call_expert(expert, "uncond", latents, timestep, uncond_context, plan)
        both = [torch.empty_like(mine) for _ in range(2)]
        dist.all_gather(both, mine.contiguous(), group=self.pair)
        return apply_cfg(both[COND].float(), both[UNCOND].float(), plan.guide_scale).to(mine.dtype)

    def cond_only_config(self, expert, latents: torch.Tensor):
        """Ulysses over all ranks if this step's tokens split evenly over them, else the group's own."""
        tokens = math.prod(latents.shape[2:]) // math.prod(expert.config.patch_size)
        if self.world_config is not None and tokens % self.world_size == 0:
            return self.world_config
        return self.group_config
