"""On the GPU: the GELU epilogue's tanh self-check, opcheck of both custom ops, the q/k kernel on strided angles."""

import torch

from wan.levers import gelu_epilogue as g
from wan.levers import qk_norm_rope as q

dev = torch.device("cuda")
print("gelu problem:", g.gelu_epilogue_problem(dev))
x = torch.randn(3, 70, 256, device=dev, dtype=torch.bfloat16)
w = torch.randn(512, 256, device=dev, dtype=torch.bfloat16)
b = torch.randn(512, device=dev, dtype=torch.bfloat16)
torch.library.opcheck(g.linear_gelu, (x, w, b))
print("linear_gelu opcheck ok")
B, L, H, D = 1, 300, 4, 64
qkv = torch.randn(B, L, 3 * H * D, device=dev, dtype=torch.bfloat16)
qq, kk, _ = qkv.chunk(3, dim=-1)
wq = torch.rand(H * D, device=dev, dtype=torch.bfloat16) + 0.5
ang = torch.rand(2 * L, D // 2, device=dev, dtype=torch.float64) * 20
cos = ang.cos().repeat_interleave(2, -1).float().view(1, 2 * L, 1, D)[:, ::2]  # strided along tokens
sin = ang.sin().repeat_interleave(2, -1).float().view(1, 2 * L, 1, D)[:, ::2]
torch.library.opcheck(q.qk_norm_rope, (qq, kk, wq, wq, cos, sin, H, 1e-6))
print("qk_norm_rope opcheck ok")
out = q.qk_norm_rope(qq, kk, wq, wq, cos, sin, H, 1e-6)[0].float()
ref = q.reference_norm_rope(qq, wq, cos, sin, H, 1e-6).float()
print("strided angles: max abs", float((out - ref).abs().max()), "rel", float((out - ref).norm() / ref.norm()))
