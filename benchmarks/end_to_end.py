"""One end-to-end benchmark run: the peers and our modes, one after another, on one set of random parts.

``EndToEnd`` owns what the modes share (the task's parts, its image, the distill LoRA pair, the forward
counter, the report) and turns each ``Measurement`` into the mode's record: measured stages and steps,
forwards and tokens counted by hooks, the plan, peak memory, and the labelled projection to the
released step count. ``run`` is the whole benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.measure import (
    FLOPS_FORMULA,
    ForwardCounter,
    Measurement,
    forward_flops,
    free_memory,
    loop_probe,
    matmul_peak,
    now,
    peak_memory_gb,
    steady_seconds_per_forward,
)
from benchmarks.modes import (
    CACHE_SPEC,
    PEER,
    Mode,
    OverBudget,
    PeerMode,
    budget_estimate,
    mode_of,
    selected_modes,
    unavailable,
)
from benchmarks.ours import build_ours, changes_experts, mode_generation, run_ours, skip_cost
from benchmarks.peers import PEERS, FewStepPeer, Peer, run_peer
from benchmarks.plan import (
    Workload,
    mode_steps,
    plan_summary,
    project_released,
    released_steps,
    sequence_lengths,
    step_plan,
)
from benchmarks.report import Report, device_name, versions
from benchmarks.weights import TASK_PARTS, TEXT_TOKENS, RandomParts, expert_config, write_lora_pair
from wan.config import HIGH, LOW, load_task_config
from wan.engine import Engine
from wan.frames import latent_frame_count
from wan.levers.compile import reset_compiled
from wan.lora import LoraFile, check_loras, lora_dir_specs

logger = logging.getLogger("benchmarks")

TASKS = tuple(TASK_PARTS)


def synthetic_image(path: Path, width: int, height: int, seed: int) -> Path:
    """A smooth RGB image with some texture at the video's size: the image tasks' conditioning input."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [np.sin(6.0 * x + phase) * np.cos(4.0 * y - phase) for phase in (0.0, 1.0, 2.0)]
    pixels = (np.stack(channels, -1) * 0.4 + 0.5 + rng.normal(0.0, 0.05, (height, width, 3))).clip(0, 1)
    Image.fromarray((pixels * 255).astype(np.uint8)).save(path)
    return path


class EndToEnd:
    """The parts, the modes, the JSON report and the time budget of one run."""

    def __init__(self, args: argparse.Namespace, started: float):
        self.args = args
        self.device = torch.device(args.device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        released = load_task_config(args.task)
        size = args.size or released.default_size
        frame_num = args.frame_num or released.frame_num
        task = dataclasses.replace(released, sizes=(size,), default_size=size, frame_num=frame_num)
        self.scratch = tempfile.TemporaryDirectory(prefix="bench_e2e_")  # the image and the LoRA pair
        image = None
        if task.kind == "i2v":
            image = synthetic_image(Path(self.scratch.name) / "image.png", *task.parse_size(size), args.seed)
        self.work = Workload(task, args.prompt, size, frame_num, args.seed, args.steps, args.warmup_steps, image)
        self.lora_dir: Path | None = None
        self.loras: tuple[LoraFile, ...] = ()
        self.components: RandomParts | None = None
        self.counter: ForwardCounter | None = None
        self.engine: Engine | None = None
        self.dirty = False  # the experts carry a lever (fp8, compile, cache hooks, streaming hooks)
        self.tokens = sequence_lengths(task, size, frame_num)["full"]
        self.model_config = expert_config(args.tiny, args.layers, task=args.task)
        self.report = Report(
            args.out,
            started,
            args.budget_s,
            {
                "versions": versions(),
                "device": device_name(self.device),
                "setup": {
                    "task": args.task,
                    "size": size,
                    "frame_num": frame_num,
                    "image": None if image is None else f"synthetic {size} PNG",
                    "latent_frames": latent_frame_count(frame_num, task.vae_stride[0]),
                    "tokens": self.tokens,
                    "text_tokens": TEXT_TOKENS,
                    "prompt": args.prompt,
                    "steps": args.steps,
                    "warmup_steps": args.warmup_steps,
                    "dtype": args.dtype,
                    "vae_dtype": args.vae_dtype,
                    "vae_tiling": args.vae_tiling,
                    "tiny": args.tiny,
                    "model_config": self.model_config,
                    "init_std": args.init_std,
                    "guide_scales": [task.guide_scale_high, task.guide_scale_low],
                    "cache_spec": CACHE_SPEC,
                    "released_steps": released_steps(task),
                    "plan_released": plan_summary(step_plan(task, released_steps(task), {})),
                },
                "flops_formula": FLOPS_FORMULA,
                "flops_per_forward": forward_flops(self.model_config, self.tokens),
            },
        )

    # ------------------------------------------------------------------ parts
    def failed(self) -> None:
        """After a failed stage: a lever may be half applied, and the engine's tensors must go."""
        self.dirty = True
        self.engine = None
        free_memory(self.device)

    def build(self) -> None:
        """All parts on the device (the offload modes move them to the CPU before they start)."""
        start = now(self.device)
        a = self.args
        self.components = RandomParts.for_task(
            a.task,
            tiny=a.tiny,
            layers=a.layers,
            device=self.device,
            dtype=getattr(torch, a.dtype),
            vae_dtype=getattr(torch, a.vae_dtype),
            init_std=a.init_std,
            vae_tiling=a.vae_tiling,  # set by every mode's reset_shared before it runs
        )
        self.counter = ForwardCounter(self.components.experts, tuple(self.model_config["patch_size"]))
        params = self.components.params()
        self.report.data["build"] = {
            "seconds": now(self.device) - start,
            "params": params,
            "text_encoder_config": self.components.text_config,
            "memory_gb_after_build": peak_memory_gb(self.device),
        }
        logger.info("built in %.1f s: %s parameters", self.report.data["build"]["seconds"], params)

    def fresh_experts(self) -> float:
        """Fresh experts (same seeds, so the same weights) after a mode left levers on them; seconds spent."""
        if not self.dirty:
            return 0.0
        start = now(self.device)
        self.engine = self.counter = None
        self.components.experts = {}
        reset_compiled()
        free_memory(self.device)
        self.components.rebuild_experts()
        self.counter = ForwardCounter(self.components.experts, tuple(self.model_config["patch_size"]))
        self.dirty = False
        return now(self.device) - start

    def measure_matmul(self) -> None:
        n = self.args.matmul_n or (256 if self.args.tiny else 8192)
        self.report.data["matmul_peak"] = matmul_peak(n, self.device, getattr(torch, self.args.dtype))
        logger.info("matmul peak %.1f TFLOP/s", self.report.data["matmul_peak"]["tflops"])

    def distill_pair(self) -> Path:
        """The run's random distill LoRA pair (rank ``--lora_rank``), written once, named as Wan2.2-Lightning's."""
        if self.lora_dir is None:
            folder = Path(self.scratch.name) / "distill_pair"
            self.lora_dir = write_lora_pair(
                folder, self.model_config, self.args.lora_rank, getattr(torch, self.args.dtype)
            )
            self.loras = tuple(check_loras(lora_dir_specs(self.lora_dir, task=self.work.task.task)))
        return self.lora_dir

    def planned_forwards(self, mode: Mode | PeerMode, steps: int | None = None) -> int:
        """Forwards of the mode's run of ``steps`` (default: the timed run's), from the engine's plan (for the
        time budget)."""
        steps = steps or self.work.steps
        if isinstance(mode, PeerMode):
            fields = FewStepPeer.schedule if mode.few_step else {}
        else:
            fields = mode_generation(mode, self.work, steps)
        return sum(p.forwards for p in step_plan(self.work.task, mode_steps(fields, steps), fields))

    # ------------------------------------------------------------------ runs
    def run_peer(self, mode: PeerMode) -> dict[str, Any]:
        rebuild_s = self.fresh_experts()
        self.components.reset_shared()
        peer: Peer = PEERS[self.work.task.task]()
        if mode.few_step:
            peer = FewStepPeer(peer, self.distill_pair())
        self.dirty = self.dirty or peer.changes_experts  # a fused pair stays in the experts
        m = run_peer(peer, self.components, self.counter, self.work, self.device)
        m.setup = {"rebuild_s": rebuild_s, **m.setup}
        record = self.summarise(m)
        self.probe_loop(record, None)
        return record

    def run_ours(self, name: str, mode: Mode, over_budget: Callable[[float], str | None]) -> dict[str, Any]:
        rebuild_s = self.fresh_experts()
        self.components.reset_shared()
        loras = ()
        if mode.lora_pair:
            self.distill_pair()
            loras = self.loras
        self.dirty = True  # from here on a lever or a placement hook may be on the experts
        self.engine, setup, info = build_ours(mode, self.components, self.work, self.device, loras)
        self.dirty = bool(loras) or changes_experts(self.engine)
        m = run_ours(self.engine, mode, self.work, self.counter, self.model_config, self.device, over_budget)
        m.info, m.setup = info, {"rebuild_s": rebuild_s, **setup, **m.setup}
        record = self.summarise(m)
        if name == "cache":
            cost = skip_cost(self.engine, self.work, self.model_config, self.args.repeats, self.device)
            record["skip_cost"] = {**cost, "tokens": self.tokens}
        not_probed = None
        if info["levers"].get("cache"):
            not_probed = "a step cache would skip the probe's forwards"
        elif self.engine.pipe.placement.name != "resident":
            not_probed = (
                f"the {self.engine.pipe.placement.name} placement moves the expert off the device after sampling"
            )
        self.probe_loop(record, not_probed)
        return record

    def probe_loop(self, record: dict[str, Any], not_probed: str | None) -> None:
        """With ``--loop_probe N``: the high-noise expert's forward out of the loop (``loop_probe``), N times each."""
        if not self.args.loop_probe:
            return
        if not_probed:
            record["loop_probe"] = {"skipped": not_probed}
            return
        expert, inputs = self.components.experts[HIGH], self.counter.last_inputs[HIGH]
        probe = loop_probe(expert, inputs, self.args.loop_probe, self.device)
        record["loop_probe"] = {"in_loop_s": record["measured"]["steady_seconds_per_forward"][HIGH], **probe}
        logger.info(
            "  loop probe: in the loop %s s per forward; alone %s",
            record["loop_probe"]["in_loop_s"],
            ", ".join(f"{k} {v['median_s']:.3f} s" for k, v in probe.items()),
        )

    def summarise(self, m: Measurement) -> dict[str, Any]:
        """One mode's record: what was measured, and apart from it the labelled projection to the released steps."""
        counted = self.counter.summary(self.model_config)
        stages = {"high_noise": 0.0, "low_noise": 0.0, **m.stages}  # a one-expert model has no low-noise stage
        stages["other"] = m.seconds - sum(stages.values())
        marks = m.clock.marks
        steps = len(marks)
        plan = step_plan(self.work.task, steps, m.info["generation"])
        steps_by_expert = {e: sum(mark[0] == e for mark in marks) for e in (HIGH, LOW)}
        sampling_s = stages["high_noise"] + stages["low_noise"]
        measured = {
            "label": f"MEASURED: one end-to-end run of {steps} steps after a warm-up run",
            "seconds": m.seconds,
            "stages": stages,
            "steps": steps_by_expert,
            "seconds_per_step": {
                e: stages[s] / steps_by_expert[e] if steps_by_expert[e] else None
                for e, s in ((HIGH, "high_noise"), (LOW, "low_noise"))
            },
            "steady_seconds_per_forward": {e: steady_seconds_per_forward(marks, e) for e in (HIGH, LOW)},
            "step_marks": [list(mark) for mark in marks],  # [expert, seconds, forwards] per step
            "forwards": {e: counted["forwards"].get(e, 0) for e in (HIGH, LOW)},
            "tokens": {e: counted["tokens"].get(e, 0) for e in (HIGH, LOW)},
            "plan": plan_summary(plan),
            "sampling_tflops": counted["flops"] / sampling_s / 1e12 if sampling_s else None,
            "peak_memory_gb": peak_memory_gb(self.device),
            "peak_memory_gb_through_sampling": m.clock.peak_gb,  # text encoding + sampling, before the decode
            "video_finite": m.finite,
            **m.extra,
        }
        if m.loop_forwards is not None:
            measured["loop_forwards"] = m.loop_forwards
        released = m.info.get("generation_released", {})
        plan_released = step_plan(self.work.task, mode_steps(released, released_steps(self.work.task)), released)
        return {
            **m.info,
            "setup_seconds": m.setup,
            "measured": measured,
            "projected_released": project_released(measured, plan_released),
        }


def run(args: argparse.Namespace, started: float) -> dict[str, Any]:
    """Build the parts, measure the matmul peak, then the peer and each mode in turn; the report."""
    modes = selected_modes(args.modes)
    bench = EndToEnd(args, started)
    report = bench.report
    with report.stage("build the models", bench.failed):
        bench.build()
    if report.data["errors"]:
        return report.data
    with report.stage("matmul peak", bench.failed):
        bench.measure_matmul()
    experts = len(TASK_PARTS[args.task].experts)
    for name in modes:
        mode = mode_of(name)
        if reason := unavailable(mode, bench.device, experts):
            report.skip(name, reason)
            continue
        peer = report.data["modes"].get(PEER)
        is_peer = isinstance(mode, PeerMode)
        steps = None if is_peer else args.warmup_steps  # ours: its warm-up must fit; then it estimates itself
        if name != PEER and not report.fits(
            name, budget_estimate(mode, peer, bench.device, bench.planned_forwards(mode, steps))
        ):
            continue
        with report.stage(f"{name} (a warm-up run, then the timed one)", bench.failed):
            try:
                record = bench.run_peer(mode) if is_peer else bench.run_ours(name, mode, report.over_budget)
            except OverBudget as exc:
                report.skip(name, str(exc))
                continue
            report.record(name, record)
        if name == PEER and PEER not in report.data["modes"]:
            break  # without the peer no ratio can be made
    report.finish()
    report.save()
    bench.scratch.cleanup()
    return report.data
