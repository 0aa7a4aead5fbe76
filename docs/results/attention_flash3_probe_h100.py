"""FlashAttention 3 against PyTorch's SDPA (cuDNN on Hopper) at A14B's self-attention shapes: ms, TFLOP/s, error.

(1, L, 40 heads, 128) in bfloat16, L the tokens of 81 frames at 480p and 720p; mean of 10 calls after 3.
Run with the flash_attn_3 wheel installed: python3 docs/results/attention_flash3_probe_h100.py
"""

import time

import torch
import torch.nn.functional as F
from flash_attn_interface import flash_attn_func


def fa3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = flash_attn_func(q, k, v)
    return out[0] if isinstance(out, tuple) else out


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def seconds(kernel, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, repeats: int = 10) -> float:
    for _ in range(3):
        kernel(q, k, v)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        kernel(q, k, v)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    torch.manual_seed(0)
    for name, tokens in (("480p", 32760), ("720p", 75600)):
        q, k, v = (torch.randn(1, tokens, 40, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * tokens * tokens * 40 * 128
        for label, kernel in (("sdpa", sdpa), ("fa3", fa3)):
            dt = seconds(kernel, q, k, v)
            print(f"{name} {label}: {dt * 1e3:.2f} ms {flops / dt / 1e12:.0f} TFLOP/s", flush=True)
        a, b = fa3(q, k, v).float(), sdpa(q, k, v).float()
        print(name, "rel err fa3 vs sdpa", float((a - b).norm() / b.norm()), flush=True)


if __name__ == "__main__":
    main()
