"""t2v-tiny: the same latents decoded by the float32 VAE and by the bfloat16 one, 8 held-out prompts (CPU).

Run from the repository root: PYTHONPATH=. python docs/results/vae_bf16_decode_t2v_tiny_cpu.py OUT.json
"""

import json
import sys

from evaluation.metrics import compare_videos
from evaluation.tiny_world import held_out_prompts
from wan.config import load_task_config
from wan.levers.vae_precision import cast_vae
from wan.settings import GenerationSettings
from wan.text2video import WanT2V
from wan.video import to_uint8_frames

config = load_task_config("t2v-tiny")
pipe = WanT2V.from_pretrained(config, config.ckpt_dir(), device="cpu")
videos = []
for seed, prompt in enumerate(held_out_prompts(8)):
    result = pipe.generate(GenerationSettings(prompt=prompt.text, seed=seed), progress=False)
    videos.append((prompt.text, result.latents, to_uint8_frames(result.video)))
cast_vae(pipe, "bfloat16")
rows = []
for text, latents, reference in videos:
    scores = compare_videos(to_uint8_frames(pipe.decode(latents).cpu()), reference)
    rows.append({"prompt": text, "psnr": scores["psnr"], "ssim": scores["ssim"]})
psnrs = [r["psnr"] for r in rows]
summary = {"psnr_mean": sum(psnrs) / len(psnrs), "psnr_worst": min(psnrs), "videos": rows}
json.dump(summary, open(sys.argv[1], "w"), indent=1)
print(json.dumps({k: v for k, v in summary.items() if k != "videos"}))
