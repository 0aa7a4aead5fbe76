"""Probe at A14B's 480p shapes: the fused q/k norm+RoPE kernel against the compiled diffusers math, and the
FFN's GELU in cuBLASLt's epilogue against compiled linear + GELU. Prints JSON (run from the repo root).

As run on the H200 (`.runs/probe_qk.py`), reformatted; it loads the lever's module by path, so the
call needed neither diffusers nor the package's other levers.
"""

import importlib.util
import json
import sys

import torch
import torch.nn.functional as F

_spec = importlib.util.spec_from_file_location("qk_norm_rope", "wan/levers/qk_norm_rope.py")
m = importlib.util.module_from_spec(_spec)
sys.modules["qk_norm_rope"] = m  # dynamo imports the op's module by name
_spec.loader.exec_module(m)

dev = "cuda"
torch.manual_seed(0)
B, L, H, HD = 1, 32760, 40, 128
D = H * HD
res = {"shapes": [B, L, H, HD]}


def timed(fn, n=30):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


qkv = (torch.randn(B, L, 3 * D, device=dev) * 2).to(torch.bfloat16)
q, k, v = qkv.chunk(3, dim=-1)
wq = (1 + 0.1 * torch.randn(D, device=dev)).to(torch.bfloat16)
wk = (1 + 0.1 * torch.randn(D, device=dev)).to(torch.bfloat16)
ang = torch.rand(L, HD // 2, device=dev, dtype=torch.float64) * 50
cos = ang.cos().repeat_interleave(2, -1).float().view(1, L, 1, HD)
sin = ang.sin().repeat_interleave(2, -1).float().view(1, L, 1, HD)


def ref_pair(q, k):
    return m.reference_norm_rope(q, wq, cos, sin, H, 1e-6), m.reference_norm_rope(k, wk, cos, sin, H, 1e-6)


def fused(q, k):
    return m.qk_norm_rope(q, k, wq, wk, cos, sin, H, 1e-6)


compiled = torch.compile(ref_pair, dynamic=True)
exact = m.reference_norm_rope(q.float(), wq.float(), cos, sin, H, 1e-6)  # fp32 all through
outs = {"eager": ref_pair(q, k)[0], "compiled": compiled(q, k)[0], "fused": fused(q, k)[0]}
res["qk_error_vs_fp32"] = {n: float((o.float() - exact).norm() / exact.norm()) for n, o in outs.items()}
res["qk_max_abs_vs_eager"] = {n: float((o.float() - outs["eager"].float()).abs().max()) for n, o in outs.items()}
res["qk_ms"] = {
    "eager": timed(lambda: ref_pair(q, k)),
    "compiled": timed(lambda: compiled(q, k)),
    "fused": timed(lambda: fused(q, k)),
}
for warps in (4, 8, 16):

    def one(warps=warps):
        out = torch.empty(B, L, H, HD, device=dev, dtype=q.dtype)
        for x, w in ((q, wq), (k, wk)):
            m._norm_rope_rows[(B * L,)](
                x, w, cos, sin, out, L, x.stride(0), x.stride(1), cos.stride(1), cos.stride(3), 1e-6,
                DIM=D, HALF_HEAD=HD // 2, BLOCK=4096, num_warps=warps,
            )  # fmt: skip

    res["qk_ms"][f"kernel_w{warps}"] = timed(one)
res["qk_bytes_per_call"] = 2 * 2 * B * L * D * 2
print(json.dumps(res), flush=True)

F_ = 13824
x = torch.randn(L, D, device=dev).to(torch.bfloat16)
W = (torch.randn(F_, D, device=dev) * 0.02).to(torch.bfloat16)
b = (torch.randn(F_, device=dev) * 0.1).to(torch.bfloat16)


def lin_gelu(x):
    return F.gelu(F.linear(x, W, b), approximate="tanh")


def epi(x):
    return torch._addmm_activation(b, x, W.t(), use_gelu=True)


lin_gelu_c = torch.compile(lin_gelu, dynamic=True)
epi_c = torch.compile(epi, dynamic=True)
pre = F.linear(x.float(), W.float(), b.float())
g = {"tanh": F.gelu(pre, approximate="tanh"), "erf": F.gelu(pre)}
fns = {
    "compiled_linear_gelu": lin_gelu_c,
    "eager_linear_gelu": lin_gelu,
    "addmm_activation": epi,
    "addmm_activation_compiled": epi_c,
}
res2 = {"gelu_error": {}, "gelu_ms": {}}
for name, fn in fns.items():
    out = fn(x).float()
    res2["gelu_error"][name] = {form: float((out - r).norm() / r.norm()) for form, r in g.items()}
for name, fn in {**fns, "linear_only": lambda x: F.linear(x, W, b)}.items():
    res2["gelu_ms"][name] = timed(lambda fn=fn: fn(x))
print(json.dumps(res2), flush=True)
