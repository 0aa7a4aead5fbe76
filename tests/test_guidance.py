"""wan.guidance: classifier-free guidance's combination of the two passes."""

import torch

from wan.guidance import apply_cfg


def test_apply_cfg_formula():
    cond, uncond = torch.tensor([2.0]), torch.tensor([1.0])
    assert apply_cfg(cond, uncond, 4.0).item() == 5.0
    assert apply_cfg(cond, uncond, 1.0).item() == 2.0
