"""wan.settings: a video's settings filled from the task config, then checked as a whole."""

import pytest

from wan.choices import PLAIN_HALF_FRAME_STEPS
from wan.errors import ConfigError
from wan.settings import GenerationSettings, check_settings


def test_unset_fields_come_from_the_task_config(test_config):
    c = test_config
    s = GenerationSettings(prompt="x", half_frame=True).resolved(c)
    assert (s.size, s.frame_num, s.sample_solver) == (c.default_size, c.frame_num, c.sample_solver)
    assert (s.sample_steps, s.sample_shift) == (c.sample_steps, c.sample_shift)
    assert (s.guide_scale_high, s.guide_scale_low) == (c.guide_scale_high, c.guide_scale_low)
    assert s.negative_prompt == c.negative_prompt
    assert s.half_frame_steps == PLAIN_HALF_FRAME_STEPS
    assert GenerationSettings(prompt="x", size="48*32").resolved(test_config).size == "48*32"  # given values stay


def test_a_video_larger_than_memory_is_refused(test_config, monkeypatch):
    settings = GenerationSettings(prompt="x", frame_num=4093, seed=0).resolved(test_config)
    monkeypatch.setattr("os.sysconf", lambda name: 1024 if name == "SC_PAGE_SIZE" else 1000)  # ~1 MB
    with pytest.raises(ConfigError, match="--frame_num 4093 at 32\\*32: the decoded video alone needs 0.1 GiB"):
        check_settings(settings, test_config)
