"""Distil t2v-tiny's 40-step CFG teacher into a 4-step LoRA pair for the distill grid, and score it.

Method: trajectory distillation. The teacher (the released sampler: 40 UniPC steps at shift 12 with
CFG 4/3) runs on training prompts of the tiny world (never a held-out combination) and its states are
read off at the student's sigmas (the ``euler_distill`` grid: 1, 0.9375, 0.8333, 0.625, 0), each by
one Euler sub-step from the nearest teacher state above it. The student, the experts with a LoRA each,
learns for step k the secant velocity that carries it from its state at sigma_k to the teacher's
state at sigma_{k+1} with one forward and no CFG; its input is the teacher's state or, half the time,
its own rollout's (refreshed as it trains), so it learns to steer back onto the teacher's path instead
of drifting over four steps (exposure bias). What limits it is generalisation, not fit: 4096 trajectories
seen ~19 times each score better on held-out prompts than 1024 seen ~80 times. Why this and not DMD
(what LightX2V trains with): the goal here is fidelity to the teacher's own video for the same seed,
which a regression on its trajectory optimises directly, while DMD matches distributions (sharper
samples, other videos); and it needs no fake-score model or GAN, so it trains in minutes on one GPU.

The high-noise LoRA learns steps 0-1 and the low-noise LoRA steps 2-3 (the releases' split; the
timestep router gives the same on t2v-tiny's boundary). The pair is saved in diffusers naming
(``transformer.<module>.lora_A/B.weight``, alpha = rank, float16) as ``high_noise_model.safetensors`` and
``low_noise_model.safetensors``, the Wan2.2-Lightning names, so ``--lora_dir`` takes the folder.
Then both are scored on the held-out prompts of ``scripts/compare.py`` (seed base_seed + i) against the
40-step teacher: PSNR/SSIM, adherence and motion amplitude, at 1, 2, 4 and 8 steps, the 4-step base
experts without the LoRAs, and 4 steps with half-frame generation.

    python scripts/distill_tiny.py --device cuda --out models/loras/t2v-tiny-lightning   # one GPU, ~3-4 min
    python scripts/distill_tiny.py --quick --out /tmp/distill                              # a CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.adherence import check as adherence_check  # noqa: E402
from evaluation.metrics import compare_videos  # noqa: E402
from evaluation.motion import motion_scores, summarise_motion, video_amplitude  # noqa: E402
from evaluation.tiny_world import held_out_prompts, sample_scene  # noqa: E402
from wan.config import (  # noqa: E402
    HIGH,
    LOW,
    load_task_config,  # noqa: E402
)
from wan.guidance import apply_cfg  # noqa: E402
from wan.lora import (  # noqa: E402
    apply_loras,
    check_loras,
    lora_dir_specs,  # noqa: E402
)
from wan.settings import GenerationSettings  # noqa: E402
from wan.solvers import LIGHTNING, make_scheduler  # noqa: E402
from wan.text2video import WanT2V  # noqa: E402
from wan.video import save_json, to_uint8_frames  # noqa: E402

logger = logging.getLogger("distill_tiny")

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2", "time_embedder.linear_1", "time_proj"]
"""Every block's attention and feed-forward projections, and the timestep embedding the steps differ by."""
FILES = {HIGH: "high_noise_model.safetensors", LOW: "low_noise_model.safetensors"}
PSNR_CAP = 100.0
TRAIN_SEED_BASE = 1_000_000  # training seeds stay clear of the held-out ones (base_seed + i)
TUNING_SEED_BASE = 2_000_000  # the tuning set's: clear of both


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt_dir", default=str(REPO_ROOT / "models" / "t2v-tiny"))
    p.add_argument("--out", default=str(REPO_ROOT / "models" / "loras" / "t2v-tiny-lightning"))
    p.add_argument("--report", default=None, help="the quality report JSON (default: OUT/quality.json)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--train_prompts",
        type=int,
        default=4096,
        help="teacher trajectories to learn from (1024 fit them and generalised 1.8 dB worse: docs/FEWSTEP.md)",
    )
    p.add_argument("--iterations", type=int, default=2400)
    p.add_argument("--train_budget_s", type=float, default=150.0, help="training stops here if not done before")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rollout_every", type=int, default=250, help="iterations between student rollout refreshes")
    p.add_argument("--eval_prompts", type=int, default=32, help="held-out prompts scored (compare.py's, same seeds)")
    p.add_argument("--base_seed", type=int, default=0)
    p.add_argument(
        "--eval_set",
        choices=["held_out", "tuning"],
        default="held_out",
        help="held_out: compare.py's prompts (the reported scores); tuning: fresh training-split scenes and seeds, "
        "to choose settings on without looking at the held-out prompts",
    )
    p.add_argument("--frame_num", type=int, default=None)
    p.add_argument("--teacher_steps", type=int, default=None, help="default: the task's 40")
    p.add_argument("--modes", default=None, help="comma-separated modes to score (default: all)")
    p.add_argument("--eval_only", action="store_true", help="score the pair already in --out, no training")
    p.add_argument("--quick", action="store_true", help="a smoke test: a few prompts, iterations and frames")
    args = p.parse_args(argv)
    if args.quick:
        args.train_prompts, args.iterations, args.batch, args.eval_prompts = 4, 4, 2, 1
        args.rollout_every, args.frame_num, args.teacher_steps, args.rank = 2, 5, 6, 4
    return args


# ----------------------------------------------------------------------------------- teacher
@torch.no_grad()
def teacher_states(pipe: WanT2V, prompts: list[str], seeds: list[int], args, batch: int = 64) -> torch.Tensor:
    """[N, K+1, C, T, h, w]: the teacher's state at each student sigma (noise first, its video's latent last)."""
    config = pipe.config
    settings = GenerationSettings(prompt=prompts[0], frame_num=args.frame_num, sample_steps=args.teacher_steps)
    run = pipe.plan(settings)  # the product's plan: expert, guidance and sigma of every teacher step
    s, plans, sigmas = run.settings, run.steps, run.sigmas
    student = LIGHTNING.sigmas()
    out = []
    for start in range(0, len(prompts), batch):
        texts, batch_seeds = prompts[start : start + batch], seeds[start : start + batch]
        context = pipe.encode_text(texts + [s.negative_prompt])
        cond, uncond = context[:-1], context[-1:].expand(len(texts), -1, -1)
        noise = torch.cat([initial_noise(pipe, s, seed) for seed in batch_seeds]).to(pipe.device)
        scheduler = make_scheduler(s.sample_solver, s.sample_shift, config.num_train_timesteps)
        scheduler.set_timesteps(s.sample_steps, device=pipe.device)
        states = {0: noise.clone()}  # student index -> state
        x = noise
        for plan in plans:
            expert = pipe.experts[plan.expert]
            t = torch.full((len(texts),), plan.timestep, device=pipe.device)
            both = expert(
                hidden_states=torch.cat([x, x]),
                timestep=torch.cat([t, t]),
                encoder_hidden_states=torch.cat([cond, uncond]),
                return_dict=False,
            )[0].float()
            velocity = (
                apply_cfg(both[: len(texts)], both[len(texts) :], plan.guide_scale)
                if plan.use_cfg
                else both[: len(texts)]
            )
            here, below = sigmas[plan.index], sigmas[plan.index + 1]
            for k, target in enumerate(student):
                if k not in states and here >= target > below:
                    states[k] = x + (target - here) * velocity  # one Euler sub-step to the student's sigma
            x = scheduler.step(velocity, scheduler.timesteps[plan.index], x, return_dict=False)[0]
        states[len(student) - 1] = x
        out.append(torch.stack([states[k] for k in range(len(student))], dim=1))
        logger.info("teacher trajectories %d/%d", min(start + batch, len(prompts)), len(prompts))
    return torch.cat(out)


def initial_noise(pipe: WanT2V, s: GenerationSettings, seed: int) -> torch.Tensor:
    """The seed's noise exactly as ``WanT2V.sample`` draws it, so a training seed is a real teacher run."""
    width, height = pipe.config.parse_size(s.size)
    _, sh, sw = pipe.config.vae_stride
    frames = (s.frame_num - 1) // pipe.config.vae_stride[0] + 1
    shape = (1, pipe.experts[HIGH].config.in_channels, frames, height // sh, width // sw)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


# ----------------------------------------------------------------------------------- student
def add_lora(expert: torch.nn.Module, rank: int) -> list[torch.nn.Parameter]:
    expert.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights=True))
    params = [p for n, p in expert.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def step_experts() -> list[str]:
    """The expert of each student step: the releases' split by step index."""
    return [HIGH if k < LIGHTNING.boundary_step else LOW for k in range(LIGHTNING.steps)]


def student_velocity(pipe: WanT2V, k: torch.Tensor, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """One forward of the step's expert (all of ``k`` on one expert) at the grid's timesteps, no CFG."""
    timesteps = torch.tensor(LIGHTNING.timesteps(), device=x.device)[k]
    expert = pipe.experts[step_experts()[int(k[0])]]
    return expert(hidden_states=x, timestep=timesteps, encoder_hidden_states=context, return_dict=False)[0].float()


@torch.no_grad()
def rollout(pipe: WanT2V, states: torch.Tensor, contexts: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """The student's own states at every grid sigma, started from each trajectory's noise."""
    sigmas = LIGHTNING.sigmas()
    out = states.clone()
    for start in range(0, len(states), batch):
        x = states[start : start + batch, 0]
        context = contexts[start : start + batch]
        for k in range(LIGHTNING.steps):
            ks = torch.full((len(x),), k, device=x.device)
            x = x + (sigmas[k + 1] - sigmas[k]) * student_velocity(pipe, ks, x, context)
            out[start : start + batch, k + 1] = x
    return out


def train(pipe: WanT2V, states: torch.Tensor, contexts: torch.Tensor, args) -> dict:
    """Regress each step's velocity onto the secant to the teacher's next state, from teacher or own states."""
    params = {name: add_lora(expert, args.rank) for name, expert in pipe.experts.items()}
    for expert in pipe.experts.values():
        expert.train()
    optimiser = torch.optim.AdamW([p for ps in params.values() for p in ps], lr=args.lr, weight_decay=0.0)
    started = time.perf_counter()
    sigmas = torch.tensor(LIGHTNING.sigmas(), device=states.device)
    rng = torch.Generator().manual_seed(0)
    own, log, losses, iterations = states, [], [], 0
    for it in range(args.iterations):
        # Warm up, then decay linearly to 0 by the last iteration or the time budget, whichever comes first.
        done = max(it / args.iterations, (time.perf_counter() - started) / args.train_budget_s)
        if done >= 1:
            logger.info("time budget reached after %d iterations", it)
            break
        for group in optimiser.param_groups:
            group["lr"] = args.lr * min(1.0, (it + 1) / 100) * (1 - done)
        if it % args.rollout_every == 0:
            for expert in pipe.experts.values():
                expert.eval()
            own = rollout(pipe, states, contexts)
            drift = float(torch.mean((own[:, -1] - states[:, -1]) ** 2))  # the 4-step latent vs the teacher's
            log.append({"iteration": it, "rollout_latent_mse": drift})
            logger.info("iteration %d: 4-step rollout latent MSE vs teacher %.5f", it, drift)
            for expert in pipe.experts.values():
                expert.train()
        k_value = int(torch.randint(LIGHTNING.steps, (1,), generator=rng))  # one step (one expert) per batch
        idx = torch.randint(len(states), (args.batch,), generator=rng).to(states.device)
        use_own = (torch.rand(args.batch, generator=rng) < 0.5).to(states.device) & (k_value > 0)
        x = torch.where(use_own.view(-1, 1, 1, 1, 1), own[idx, k_value], states[idx, k_value])
        target = (states[idx, k_value + 1] - x) / (sigmas[k_value + 1] - sigmas[k_value])
        k = torch.full((args.batch,), k_value, device=states.device)
        loss = torch.nn.functional.mse_loss(student_velocity(pipe, k, x, contexts[idx]), target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        iterations = it + 1
        losses.append(loss.item())
        if (it + 1) % max(1, args.iterations // 20) == 0:
            log.append({"iteration": it + 1, "loss": float(np.mean(losses))})
            logger.info("iteration %d/%d loss %.4f", it + 1, args.iterations, log[-1]["loss"])
            losses = []
    for expert in pipe.experts.values():
        expert.eval()
    return {"iterations": iterations, "seconds": time.perf_counter() - started, "log": log}


def save_pair(pipe: WanT2V, out: Path, args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, expert in pipe.experts.items():
        state = get_peft_model_state_dict(expert)
        tensors = {f"transformer.{k}": v.detach().half().contiguous().cpu() for k, v in state.items()}
        meta = {"format": "pt", "trained_by": "scripts/distill_tiny.py", "schedule": json.dumps(LIGHTNING.__dict__)}
        save_file(tensors, out / FILES[name], metadata=meta)
        logger.info("saved %s (%d tensors)", out / FILES[name], len(tensors))


# ----------------------------------------------------------------------------------- quality
def eval_prompts(args) -> list[tuple[str, int]]:
    """(prompt, seed) pairs to score: the held-out prompts (seed base_seed + i, as compare.py), or a tuning set of
    training-split scenes drawn apart from the training trajectories (other draws, other seeds)."""
    if args.eval_set == "tuning":
        rng = random.Random(TUNING_SEED_BASE)
        texts = [sample_scene(rng, "train").caption.text for _ in range(args.eval_prompts)]
        return [(text, TUNING_SEED_BASE + i) for i, text in enumerate(texts)]
    return [(p.text, args.base_seed + i) for i, p in enumerate(held_out_prompts(args.eval_prompts))]


def score(pipe_base: WanT2V, pipe_student: WanT2V, args, on_prompt=None) -> dict:
    """Every mode against the 40-step teacher on ``eval_prompts``."""
    prompts = eval_prompts(args)
    distill = dict(
        sample_solver=LIGHTNING.solver, sample_shift=LIGHTNING.shift, guide_scale_high=1.0, guide_scale_low=1.0
    )
    modes = {
        "teacher_40": (pipe_base, {}),
        "base_4": (pipe_base, {**distill, "sample_steps": 4}),
        **{f"lora_{n}": (pipe_student, {**distill, "sample_steps": n}) for n in (1, 2, 4, 8)},
        "lora_4_half_frame": (pipe_student, {**distill, "sample_steps": 4, "half_frame": True}),
        "lora_4_shift3": (pipe_student, {**distill, "sample_steps": 4, "sample_shift": 3.0}),
        "lora_4_shift8": (pipe_student, {**distill, "sample_steps": 4, "sample_shift": 8.0}),
        "lora_4_plain_euler": (pipe_student, {**distill, "sample_steps": 4, "sample_solver": "euler"}),
    }
    if args.modes:
        modes = {m: modes[m] for m in ["teacher_40", *args.modes.split(",")]}
    rows: dict[str, list[dict]] = {m: [] for m in modes}
    for i, (prompt, seed) in enumerate(prompts):
        base = GenerationSettings(prompt=prompt, seed=seed, frame_num=args.frame_num, sample_steps=args.teacher_steps)
        teacher = None
        for mode, (pipe, fields) in modes.items():
            start = time.perf_counter()
            result = pipe.generate(replace(base, **fields), progress=False)
            seconds = time.perf_counter() - start
            frames = to_uint8_frames(result.video)
            teacher = frames if teacher is None else teacher
            scores = compare_videos(frames, teacher)
            scores["psnr"] = min(scores["psnr"], PSNR_CAP)
            rows[mode].append(
                {
                    "prompt": prompt,
                    "seed": base.seed,
                    **scores,
                    "adherent": adherence_check(result.video, prompt).matched,
                    **motion_scores(frames, prompt, video_amplitude(teacher, prompt)),
                    "forwards": sum(result.forwards.values()),
                    "seconds": seconds,
                }
            )
        logger.info(
            "scored %d/%d: %s (%s)",
            i + 1,
            len(prompts),
            prompt,
            {m: round(r[-1]["seconds"], 2) for m, r in rows.items()},
        )
        if on_prompt is not None:  # a run cut short still leaves the prompts it finished
            on_prompt(summarise(rows))
    return summarise(rows)


def summarise(rows: dict[str, list[dict]]) -> dict:
    """Per mode: mean and worst PSNR, SSIM, adherence, motion against the teacher; with the rows."""
    summary = {}
    for mode, mode_rows in rows.items():
        summary[mode] = {
            "psnr_mean": float(np.mean([r["psnr"] for r in mode_rows])),
            "psnr_worst": float(np.min([r["psnr"] for r in mode_rows])),
            "ssim_mean": float(np.mean([r["ssim"] for r in mode_rows])),
            "adherence": float(np.mean([r["adherent"] for r in mode_rows])),
            "amplitude_mean": float(np.mean([r["amplitude"] for r in mode_rows])),
            **summarise_motion(mode_rows),
            "forwards": float(np.mean([r["forwards"] for r in mode_rows])),
            "seconds_mean": float(np.mean([r["seconds"] for r in mode_rows])),
        }
    return {"prompts": len(next(iter(rows.values()))), "summary": summary, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    torch.manual_seed(0)
    config = load_task_config("t2v-tiny")
    out = Path(args.out)
    started = time.perf_counter()
    trained: dict = {"prompts": args.train_prompts, "batch": args.batch, "rank": args.rank, "lr": args.lr}
    if not args.eval_only:
        pipe = WanT2V.from_pretrained(config, args.ckpt_dir, device=args.device)
        for expert in pipe.experts.values():  # a GPU keeps the stored float16; teacher states and training want fp32
            expert.float()
        rng = random.Random(0)
        train_prompts = [sample_scene(rng, "train").caption.text for _ in range(args.train_prompts)]
        seeds = [TRAIN_SEED_BASE + i for i in range(args.train_prompts)]
        states = teacher_states(pipe, train_prompts, seeds, args)
        contexts = torch.cat([pipe.encode_text(train_prompts[i : i + 256]) for i in range(0, len(train_prompts), 256)])
        trained["teacher_seconds"] = time.perf_counter() - started
        trained.update(train(pipe, states, contexts, args))
        save_pair(pipe, out, args)
        del pipe, states

    base = WanT2V.from_pretrained(config, args.ckpt_dir, device=args.device)
    student = WanT2V.from_pretrained(config, args.ckpt_dir, device=args.device)
    apply_loras(student, check_loras(lora_dir_specs(out, task="t2v-tiny"), ckpt_dir=Path(args.ckpt_dir)))
    head = {
        "command": "python scripts/distill_tiny.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "schedule": {**LIGHTNING.__dict__, "timesteps": LIGHTNING.timesteps(), "sigmas": LIGHTNING.sigmas()},
        "train": trained,
    }
    report_path = Path(args.report) if args.report else out / "quality.json"
    quality = score(base, student, args, on_prompt=lambda q: save_json({**head, **q}, report_path))
    for mode, s in quality["summary"].items():
        print(
            f"{mode:20s} psnr {s['psnr_mean']:6.2f} ssim {s['ssim_mean']:.3f} adherence {s['adherence']:.3f} "
            f"amplitude x{s['amplitude_vs_baseline'] or float('nan'):.3f} forwards {s['forwards']:.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
