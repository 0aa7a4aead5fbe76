"""Throwaway: FA3 vs PyTorch SDPA (cuDNN) at A14B's self-attention shapes."""
import time, torch, torch.nn.functional as F
from flash_attn_interface import flash_attn_func
torch.manual_seed(0)
for name, L in (("480p", 32760), ("720p", 75600)):
    q, k, v = (torch.randn(1, L, 40, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    flops = 4 * L * L * 40 * 128
    def fa3(): return flash_attn_func(q, k, v)
    def sdpa(): return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    for fname, f in (("sdpa", sdpa), ("fa3", fa3)):
        for _ in range(3): f()
        torch.cuda.synchronize(); t = time.perf_counter(); n = 10
        for _ in range(n): out = f()
        torch.cuda.synchronize(); dt = (time.perf_counter() - t) / n
        out = out[0] if isinstance(out, tuple) else out
        print(f"{name} {fname}: {dt*1e3:.2f} ms {flops/dt/1e12:.0f} TFLOP/s", flush=True)
    a = fa3(); a = a[0] if isinstance(a, tuple) else a; b = sdpa()
    print(name, "rel err fa3 vs sdpa", float((a.float() - b.float()).norm() / b.float().norm()), flush=True)
