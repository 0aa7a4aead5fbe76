"""benchmarks.peers: each task's diffusers pipeline gets the same video as our modes."""

from __future__ import annotations

import dataclasses

from benchmarks.peers import PEERS, WanT2VPeer
from benchmarks.plan import GUIDE_HIGH, GUIDE_LOW, Workload
from wan.config import HIGH, LOW, load_task_config


def test_t2v_peer_inputs_follow_the_workload():
    task = dataclasses.replace(load_task_config("t2v-A14B"), sizes=("832*480",))
    work = Workload(task, "a fox", "832*480", 81, 0, 6, 3)
    inputs = PEERS["t2v-A14B"]().inputs(work)
    assert (inputs["width"], inputs["height"], inputs["num_frames"]) == (832, 480, 81)
    assert (inputs["guidance_scale"], inputs["guidance_scale_2"]) == (GUIDE_HIGH, GUIDE_LOW)
    assert inputs["negative_prompt"] == task.negative_prompt and inputs["prompt"] == "a fox"


def test_steps_are_labelled_by_the_router():
    task = load_task_config("t2v-A14B")
    peer = WanT2VPeer()
    assert peer.expert(875.0, task) == HIGH and peer.expert(874.0, task) == LOW
