"""Time the Wan VAE's image encode and video decode at full size, per precision and kernel option.

At 4 steps the VAE is a third of an A14B run, so its options are measured on their own: each mode
encodes an image-to-video conditioning video (the image, then zero frames) and decodes random latents
of the same size, after a warm-up, and reports seconds, peak memory and PSNR against float32 eager.

    python3 scripts/bench_vae.py --size 832*480 --frame_num 81 --modes float32,bfloat16,bfloat16+compile
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.measure import free_memory, peak_memory_gb, reset_peak_memory, timed  # noqa: E402
from benchmarks.weights import build_vae  # noqa: E402
from wan.levers.vae_compile import channels_last, compile_norms  # noqa: E402

logger = logging.getLogger("bench_vae")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of two videos in [-1, 1]."""
    mse = float(((a.float() - b.float()) ** 2).mean())
    return 10 * torch.log10(torch.tensor(4.0 / max(mse, 1e-20))).item()


def warm_and_timed(run, device: torch.device, repeats: int) -> tuple[list[float], torch.Tensor]:
    """Seconds of each of ``repeats`` calls of ``run`` after one warm-up call (compiling, if any), and its result."""
    out = run()
    return timed(run, device, repeats), out


@torch.no_grad()
def encode_and_decode(vae, video: torch.Tensor, z: torch.Tensor, device: torch.device, repeats: int):
    """(seconds, latents) of the encode of ``video`` and (seconds, video) of the decode of ``z``."""
    encoded = warm_and_timed(lambda: vae.encode(video).latent_dist.mode(), device, repeats)
    return encoded, warm_and_timed(lambda: vae.decode(z, return_dict=False)[0], device, repeats)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="832*480")
    parser.add_argument("--frame_num", type=int, default=81)
    parser.add_argument(
        "--modes", default="float32,bfloat16,bfloat16+compile,bfloat16+channels_last,bfloat16+compile+channels_last"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default="bench_vae.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    device = torch.device(args.device)
    width, height = (int(v) for v in args.size.split("*"))
    latent = (1, 16, (args.frame_num - 1) // 4 + 1, height // 8, width // 8)
    z = torch.randn(latent, generator=torch.Generator().manual_seed(0)).to(device)
    video = torch.zeros(1, 3, args.frame_num, height, width, device=device)
    video[:, :, 0] = torch.rand(3, height, width, generator=torch.Generator().manual_seed(1)).to(device) * 2 - 1
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    command = " ".join(["scripts/bench_vae.py", *(sys.argv[1:] if argv is None else argv)])
    report = {"command": command, "size": args.size, "frame_num": args.frame_num, "device": name}
    report["modes"] = modes = {}
    refs: dict[str, torch.Tensor] = {}
    for mode in args.modes.split(","):
        dtype_name, *options = mode.split("+")
        dtype = getattr(torch, dtype_name)
        vae = build_vae({}, device, dtype, 3)
        if "channels_last" in options:
            channels_last(vae)
        if "compile" in options:
            compile_norms(vae)
        reset_peak_memory(device)
        (enc_t, enc), (dec_t, dec) = encode_and_decode(vae, video.to(dtype), z.to(dtype), device, args.repeats)
        del vae
        refs.setdefault("encode", enc.float())
        refs.setdefault("decode", dec.float())
        modes[mode] = {
            "encode_s": enc_t,
            "decode_s": dec_t,
            "encode_psnr_vs_first_db": psnr(enc.float() / 4, refs["encode"] / 4),
            "decode_psnr_vs_first_db": psnr(dec, refs["decode"]),
            "peak_gib": peak_memory_gb(device),
        }
        logger.info("%s: %s", mode, modes[mode])
        Path(args.out).write_text(json.dumps(report, indent=1))
        free_memory(device)
    return report


if __name__ == "__main__":
    main()
