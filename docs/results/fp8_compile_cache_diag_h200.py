"""Which lever combination breaks float8 under torch.compile: one combination per process (fresh dynamo)."""

import sys
import traceback

sys.path.insert(0, ".")  # run from the repository root
from wan.config import load_task_config  # noqa: E402
from wan.levers import Levers, apply_levers  # noqa: E402
from wan.settings import GenerationSettings  # noqa: E402
from wan.text2video import WanT2V  # noqa: E402

combos = {
    "fp8ffn+compile": dict(fp8="ffn", compile=True),
    "fp8all+compile": dict(fp8="all", compile=True),
    "fp8ffn+compile+fuse": dict(fp8="ffn", compile=True, fuse_projections=True),
    "fp8ffn+compile+sea": dict(fp8="ffn", compile=True, cache="sea:0.5:3"),
    "fp8ffn+compile+taylorseer": dict(fp8="ffn", compile=True, cache="taylorseer:3"),
    "fp8ffn+sea": dict(fp8="ffn", cache="sea:0.5:3"),
    "compile+sea": dict(compile=True, cache="sea:0.5:3"),
}
name = sys.argv[1]
config = load_task_config("t2v-tiny")
pipe = WanT2V.from_pretrained(config, config.ckpt_dir(), device="cuda", convert_model_dtype=True)
apply_levers(pipe, Levers(**combos[name]))
try:
    pipe.generate(GenerationSettings(prompt="a red square moving left", seed=0, sample_steps=6), progress=False)
    print(name, "OK")
except Exception as error:  # noqa: BLE001
    print(name, "FAIL", type(error).__name__, str(error).splitlines()[0][:200])
    traceback.print_exc(file=open(f"/tmp/{name}.tb", "w"))
