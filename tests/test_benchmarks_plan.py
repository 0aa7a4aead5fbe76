"""benchmarks.plan: preset truncation scaled to short runs, and sequence lengths from the engine's geometry."""

from __future__ import annotations

import dataclasses

from benchmarks.plan import scaled_generation, sequence_lengths
from wan.config import load_task_config


def test_preset_truncation_scales_with_steps():
    fields = {"cfg_truncate_steps": 5, "cfg_truncate_high_noise_steps": 3}
    assert scaled_generation(fields, 40) == fields
    assert scaled_generation(fields, 6) == {"cfg_truncate_steps": 1, "cfg_truncate_high_noise_steps": 1}
    assert scaled_generation(fields, 16) == {"cfg_truncate_steps": 2, "cfg_truncate_high_noise_steps": 1}


def test_sequence_lengths_are_the_released_ones():
    """81 frames: 21 latent frames of (H/16) x (W/16) tokens; half-frame generation runs ceil(21/2) = 11 of them."""
    task = load_task_config("t2v-A14B")
    assert sequence_lengths(task, "832*480", 81) == {"full": 21 * 30 * 52, "half": 11 * 30 * 52}
    assert sequence_lengths(task, "1280*720", 81)["full"] == 75600
    tiny = dataclasses.replace(task, sizes=("64*64",))
    assert sequence_lengths(tiny, "64*64", 9) == {"full": 3 * 16, "half": 2 * 16}
