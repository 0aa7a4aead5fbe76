"""benchmarks.peers: each task's diffusers pipeline gets the same video as our modes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.peers import PEERS, FewStepPeer, WanI2VPeer, WanT2VPeer, WanTI2VPeer
from benchmarks.plan import Workload
from wan.config import HIGH, LOW, load_task_config


def test_t2v_peer_inputs_follow_the_workload():
    task = dataclasses.replace(load_task_config("t2v-A14B"), sizes=("832*480",))
    work = Workload(task, "a fox", "832*480", 81, 0, 6, 3)
    inputs = PEERS["t2v-A14B"]().inputs(work)
    assert (inputs["width"], inputs["height"], inputs["num_frames"]) == (832, 480, 81)
    assert (inputs["guidance_scale"], inputs["guidance_scale_2"]) == (4.0, 3.0)
    assert inputs["negative_prompt"] == task.negative_prompt and inputs["prompt"] == "a fox"


def test_steps_are_labelled_by_the_router():
    task = load_task_config("t2v-A14B")
    peer = WanT2VPeer()
    assert peer.expert(875.0, task) == HIGH and peer.expert(874.0, task) == LOW


def test_image_to_video_peer_takes_the_workload_image(tmp_path: Path):
    task = load_task_config("i2v-A14B")
    Image.new("RGB", (832, 480), (10, 200, 30)).save(tmp_path / "i.png")
    inputs = WanI2VPeer().inputs(Workload(task, "a fox", "832*480", 81, 0, 6, 3, tmp_path / "i.png"))
    assert inputs["image"].size == (832, 480) and inputs["image"].mode == "RGB"
    assert (inputs["guidance_scale"], inputs["guidance_scale_2"]) == (3.5, 3.5)  # the released I2V guidance
    with pytest.raises(ValueError, match="needs the workload's image"):
        WanI2VPeer().inputs(Workload(task, "a fox", "832*480", 81, 0, 6, 3))


def test_ti2v_peer_has_one_guidance_and_one_expert():
    task = load_task_config("ti2v-5B")
    inputs = WanTI2VPeer().inputs(Workload(task, "a fox", "1280*704", 121, 0, 6, 3))
    assert inputs["guidance_scale"] == 5.0 and "guidance_scale_2" not in inputs
    assert WanTI2VPeer().expert(10.0, task) == HIGH  # no boundary: every step is the one expert's


def test_few_step_peer_samples_the_distill_schedule(tmp_path: Path):
    task = dataclasses.replace(load_task_config("t2v-A14B"), sizes=("832*480",))
    work = Workload(task, "a fox", "832*480", 81, 0, 40, 3)
    peer = FewStepPeer(WanT2VPeer(), tmp_path)
    inputs = peer.inputs(work)
    assert (inputs["guidance_scale"], inputs["guidance_scale_2"]) == (1.0, 1.0)
    assert peer.steps(work) == 4 and peer.changes_experts
    assert peer.generation()["sample_steps"] == 4
