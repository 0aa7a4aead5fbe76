"""Seconds of one 480p 81-frame Wan2.1 VAE decode (random weights) by dtype and cuDNN setting, and how far apart."""

import json
import sys
import time

import torch

sys.path.insert(0, "scripts")
from bench_a14b import build_vae  # noqa: E402

dev = torch.device("cuda")
z = torch.randn(1, 16, 21, 60, 104, generator=torch.Generator().manual_seed(0)).to(dev)
out, ref = {}, None
for name, dtype, bench in [
    ("float32", torch.float32, False),
    ("float32_cudnn_benchmark", torch.float32, True),
    ("bfloat16", torch.bfloat16, False),
    ("bfloat16_cudnn_benchmark", torch.bfloat16, True),
]:
    torch.backends.cudnn.benchmark = bench
    vae = build_vae({}, dev, dtype, 3)
    times = []
    with torch.no_grad():
        for _ in range(2):
            torch.cuda.synchronize()
            t = time.perf_counter()
            video = vae.decode(z.to(dtype), return_dict=False)[0]
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    v = video.float().clamp(-1, 1)
    if ref is None:
        ref = v
    mse = float(((v - ref) ** 2).mean())
    psnr = 10 * torch.log10(torch.tensor(4.0 / max(mse, 1e-20))).item()
    out[name] = {"seconds": times, "psnr_vs_float32_db": psnr, "peak_gb": torch.cuda.max_memory_allocated() / 2**30}
    print(name, [round(x, 3) for x in times], round(psnr, 2), flush=True)
    del vae, video
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    json.dump(out, open(sys.argv[1], "w"), indent=1)
