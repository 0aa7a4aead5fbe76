"""CPU screen of which layers float8 may take (docs/QUALITY.md): emulate torchao's row-wise float8 linear.

Runs ``scripts/compare.py`` with the ``fp8`` lever replaced by an emulation that rounds each linear
layer's input rows and weight rows to e4m3 (scale amax / 448) and multiplies in the layer's dtype.
``FP8_PAT`` (a regular expression on the block-relative layer name) picks the layers. A screen only:
the decision's figures come from the real kernel on a GPU. From the repository root:

    FP8_PAT='ffn\\.' python docs/results/fp8_emulation_screen.py --prompt_file tune8.txt --prompts 8 \\
        --base_seed 1000 --device cpu --out_dir /tmp/emu --modes 'baseline,cfg_trunc~cache=sea:0.5:3/fp8'
"""

import os
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import compare  # noqa: E402

import wan.levers  # noqa: E402

PATTERN = re.compile(os.environ.get("FP8_PAT", "."))
E4M3_MAX = 448.0


def round_rows_to_e4m3(t: torch.Tensor) -> torch.Tensor:
    scale = t.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    return ((t.float() / scale).to(torch.float8_e4m3fn).float() * scale).to(t.dtype)


class EmulatedFloat8Linear(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.linear = linear
        self.weight = round_rows_to_e4m3(linear.weight.data)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(round_rows_to_e4m3(x), self.weight, self.linear.bias)


def emulate_fp8(pipe, scope: str = "all") -> None:
    for expert in pipe.experts.values():
        for name, module in list(expert.named_modules()):
            for child_name, child in list(module.named_children()):
                full = f"{name}.{child_name}" if name else child_name
                if isinstance(child, torch.nn.Linear) and full.startswith("blocks.") and PATTERN.search(full):
                    setattr(module, child_name, EmulatedFloat8Linear(child))


wan.levers.quantize_experts_fp8 = emulate_fp8
if __name__ == "__main__":
    sys.exit(compare.main())
