"""wan.lora on t2v-tiny: each naming fuses to W + scale (alpha/rank) up @ down, on the experts asked for,
with no peft layer left; bad files are refused in one line before the model loads."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import LORA_LAYERS, lora_metadata, lora_tensors, random_lora

import generate
from wan import engine
from wan.config import HIGH, LOW, load_task_config
from wan.errors import ConfigError
from wan.lora import (
    BOTH,
    LoraSpec,
    apply_loras,
    check_loras,
    lora_record,
    lora_specs,
    parse_lora_arg,
    warn_if_distilled_without_loras,
)
from wan.outputs import sidecar_path
from wan.plan import plan_steps
from wan.settings import GenerationSettings
from wan.solvers import make_scheduler
from wan.text2video import WanT2V

REPO = Path(__file__).resolve().parent.parent
RANK, ALPHA = 4, 2.0
FAST = dict(prompt="a red square moving left", seed=3, frame_num=5, sample_steps=4)


@pytest.fixture
def pipe() -> WanT2V:
    """A fresh t2v-tiny: fusing changes the weights in place."""
    return WanT2V.from_pretrained(load_task_config("t2v-tiny"), REPO / "models" / "t2v-tiny", device="cpu")


@pytest.fixture(scope="module")
def pairs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    model = WanT2V.from_pretrained(load_task_config("t2v-tiny"), REPO / "models" / "t2v-tiny").experts[HIGH]
    return random_lora(model, RANK, seed=0)


def write_lora(path: Path, pairs, naming: str = "wan", alpha: float = ALPHA) -> Path:
    metadata = lora_metadata(RANK, alpha) if naming == "diffusers" else None
    save_file(lora_tensors(pairs, naming, alpha), path, metadata=metadata)
    return path


def weights(expert: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in expert.state_dict().items()}


def video(pipe: WanT2V, files) -> torch.Tensor:
    apply_loras(pipe, files)
    return pipe.generate(GenerationSettings(**FAST), progress=False).video


def test_parse_lora_arg():
    assert parse_lora_arg("a.safetensors") == (Path("a.safetensors"), 1.0)
    assert parse_lora_arg("d/a.safetensors:0.5") == (Path("d/a.safetensors"), 0.5)
    assert parse_lora_arg("c:/x/a.safetensors") == (Path("c:/x/a.safetensors"), 1.0)  # the colon is the path's
    specs = lora_specs({"lora": ["a:2"], "lora_high": ["b"], "lora_low": None})
    assert [(s.path.name, s.scale, s.experts) for s in specs] == [("a", 2.0, BOTH), ("b", 1.0, (HIGH,))]
    with pytest.raises(ConfigError, match="--lora_low a.safetensors:nan: the scale must be a finite number"):
        lora_specs({"lora_low": ["a.safetensors:nan"]})


@pytest.mark.parametrize("naming", ["diffusers", "wan", "wan_ab"])
def test_fused_weights_are_w_plus_scaled_up_down(pipe, pairs, tmp_path, naming):
    before = {name: weights(e) for name, e in pipe.experts.items()}
    files = check_loras([LoraSpec(write_lora(tmp_path / "l.safetensors", pairs, naming), 0.7, BOTH)])
    assert files[0].format == ("diffusers" if naming == "diffusers" else "wan") and files[0].pairs == len(pairs)
    apply_loras(pipe, files)
    for name, expert in pipe.experts.items():
        after = expert.state_dict()
        assert set(after) == set(before[name])  # no peft layer (lora_A, base_layer) left behind
        assert not any("lora" in type(m).__module__ for m in expert.modules())
        for module, (down, up) in pairs.items():
            expected = before[name][f"{module}.weight"] + 0.7 * (ALPHA / RANK) * up @ down
            torch.testing.assert_close(after[f"{module}.weight"], expected, rtol=0, atol=1e-6)
        untouched = [k for k in after if k.rsplit(".", 1)[0] not in pairs]
        assert all(torch.equal(after[k], before[name][k]) for k in untouched)


def test_stacked_loras_add_up(pipe, pairs, tmp_path):
    other = {k: (d.flip(0), u * 2) for k, (d, u) in pairs.items()}
    specs = [
        LoraSpec(write_lora(tmp_path / "a.safetensors", pairs), 1.0, BOTH),
        LoraSpec(write_lora(tmp_path / "b.safetensors", other, "diffusers"), -0.5, (LOW,)),
    ]
    before = weights(pipe.experts[LOW])
    apply_loras(pipe, check_loras(specs))
    module = next(iter(pairs))
    (d1, u1), (d2, u2) = pairs[module], other[module]
    expected = before[f"{module}.weight"] + 0.5 * u1 @ d1 - 0.5 * 0.5 * u2 @ d2
    torch.testing.assert_close(pipe.experts[LOW].state_dict()[f"{module}.weight"], expected, rtol=0, atol=1e-6)


def test_diff_b_keys_shift_the_bias(pipe, pairs, tmp_path):
    module = next(iter(pairs))
    tensors = lora_tensors({module: pairs[module]}, "wan", ALPHA)
    bias = torch.randn(pipe.experts[HIGH].get_submodule(module).out_features)
    tensors[f"diffusion_model.blocks.0.{LORA_LAYERS[module.split('.', 2)[2]]}.diff_b"] = bias
    save_file(tensors, tmp_path / "b.safetensors")
    before = pipe.experts[HIGH].get_submodule(module).bias.clone()
    apply_loras(pipe, check_loras([LoraSpec(tmp_path / "b.safetensors", 0.5, (HIGH,))]))
    torch.testing.assert_close(pipe.experts[HIGH].get_submodule(module).bias, before + 0.5 * bias)


def test_two_namings_give_the_same_video(pairs, tmp_path):
    load = load_task_config("t2v-tiny")
    videos = []
    for naming in ("diffusers", "wan"):
        pipe = WanT2V.from_pretrained(load, REPO / "models" / "t2v-tiny")
        spec = LoraSpec(write_lora(tmp_path / f"{naming}.safetensors", pairs, naming), 1.5, BOTH)
        videos.append(video(pipe, check_loras([spec])))
    torch.testing.assert_close(videos[0], videos[1], rtol=0, atol=1e-5)


def test_scale_0_is_the_base_model_bit_for_bit(pipe, pairs, tmp_path):
    base = video(pipe, [])
    spec = LoraSpec(write_lora(tmp_path / "l.safetensors", pairs), 0.0, BOTH)
    with_lora = video(pipe, check_loras([spec]))
    assert torch.equal(base, with_lora)
    assert not torch.equal(base, video(pipe, check_loras([LoraSpec(spec.path, 1.0, BOTH)])))  # the LoRA does act


def test_lora_high_changes_only_the_high_noise_expert(pipe, pairs, tmp_path):
    before = {name: weights(e) for name, e in pipe.experts.items()}
    apply_loras(pipe, check_loras([LoraSpec(write_lora(tmp_path / "l.safetensors", pairs), 1.0, (HIGH,))]))
    after = {name: e.state_dict() for name, e in pipe.experts.items()}
    assert all(torch.equal(after[LOW][k], v) for k, v in before[LOW].items())
    assert sum(not torch.equal(after[HIGH][k], v) for k, v in before[HIGH].items()) == len(pairs)


def test_a_file_named_for_one_expert_on_the_other_is_flagged(pairs, tmp_path, caplog):
    path = write_lora(tmp_path / "lightning_4steps_HIGH_fp16.safetensors", pairs)
    check_loras([LoraSpec(path, 1.0, (HIGH,))])
    assert not caplog.records
    check_loras([LoraSpec(path, 1.0, BOTH)])
    assert "named for the high_noise expert but goes on high_noise and low_noise; meant --lora_high?" in caplog.text


def test_sidecar_record_names_file_hash_and_scale_per_expert(pairs, tmp_path):
    path = write_lora(tmp_path / "l.safetensors", pairs)
    files = check_loras([LoraSpec(path, 0.5, BOTH), LoraSpec(path, 2.0, (LOW,))])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    entry = {"file": "l.safetensors", "sha256": digest, "scale": 0.5}
    assert lora_record(files) == {HIGH: [entry], LOW: [entry, {**entry, "scale": 2.0}]}


def bad_file(kind: str, path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A LoRA file that is wrong in one way."""
    if kind == "corrupt":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    elif kind == "pickle":
        path = path.with_suffix(".pt")
        torch.save(tensors, path)
    elif kind == "i2v":
        save_file({**tensors, "diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight": torch.zeros(4, 8)}, path)
    elif kind == "unknown":
        save_file({"unet.down.0.lora_A.weight": torch.zeros(4, 8)}, path)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "LoRA file .*l.safetensors cannot be read"),
        ("corrupt", "not a readable safetensors file"),
        ("pickle", "not a .safetensors file"),
        ("i2v", "is for an image-to-video model \\(key diffusion_model.blocks.0.cross_attn.k_img"),
        ("unknown", "key unet.down.0.lora_A.weight is in no LoRA naming"),
    ],
)
def test_bad_files_are_refused_before_the_model_loads(pairs, tmp_path, kind, message):
    path = bad_file(kind, tmp_path / "l.safetensors", lora_tensors(pairs, "wan", ALPHA))
    with pytest.raises(ConfigError, match=message):
        check_loras([LoraSpec(path, 1.0, BOTH)])


def test_a_lora_for_other_layers_names_the_first_unmatched_key(pipe, pairs, tmp_path):
    """Nothing is fused, not even the good LoRA before it."""
    module = next(iter(pairs))
    far = {module.replace("blocks.0", "blocks.99"): pairs[module]}
    good = LoraSpec(write_lora(tmp_path / "good.safetensors", pairs), 1.0, BOTH)
    files = check_loras([good, LoraSpec(write_lora(tmp_path / "far.safetensors", far), 1.0, BOTH)])
    before = weights(pipe.experts[HIGH])
    with pytest.raises(ConfigError, match="key transformer.blocks.99.attn1.to_q.lora_A.weight matches no layer"):
        apply_loras(pipe, files)
    assert all(torch.equal(pipe.experts[HIGH].state_dict()[k], v) for k, v in before.items())


def test_a_lora_for_another_size_is_refused(pipe, tmp_path):
    small = {"blocks.0.attn1.to_q": (torch.zeros(RANK, 64), torch.zeros(64, RANK))}
    files = check_loras([LoraSpec(write_lora(tmp_path / "s.safetensors", small), 1.0, BOTH)])
    with pytest.raises(ConfigError, match="has shape \\(4, 64\\) .* another model size"):
        apply_loras(pipe, files)


def test_distillation_settings_one_forward_per_step_both_experts():
    """The cards' --sample_steps 4 --sample_shift 5 --sample_guide_scale 1 on A14B's boundary."""
    config = load_task_config("t2v-A14B")
    scheduler = make_scheduler("unipc", 5.0)
    scheduler.set_timesteps(4)
    plans = plan_steps(
        scheduler.timesteps.tolist(),
        boundary=config.boundary,
        guide_scale_high=1.0,
        guide_scale_low=1.0,
        cfg_truncate_steps=2,
    )
    assert [p.expert for p in plans] == [HIGH, HIGH, LOW, LOW]
    assert sum(p.forwards for p in plans) == 4 and not any(p.use_cfg for p in plans)


def test_distillation_run_with_half_frame_and_truncation(pipe, pairs, tmp_path):
    apply_loras(pipe, check_loras([LoraSpec(write_lora(tmp_path / "l.safetensors", pairs), 1.0, BOTH)]))
    settings = GenerationSettings(
        **{**FAST, "sample_steps": 4},
        sample_shift=5.0,
        guide_scale_high=1.0,
        guide_scale_low=1.0,
        half_frame=True,
        cfg_truncate_steps=1,
    )
    result = pipe.generate(settings, progress=False)
    assert (result.high_noise_steps, result.low_noise_steps) == (2, 2)
    assert result.forwards == {HIGH: 2, LOW: 2} and torch.isfinite(result.video).all()


# ----------------------------------------------------------------------------------- generate.py
@pytest.fixture
def cli(task_file, ckpt) -> list[str]:
    return ["--task", str(task_file), "--ckpt_dir", str(ckpt), "--device", "cpu", "--quiet", "--prompt", "a cat"]


@pytest.fixture
def tiny_lora(parts, tmp_path) -> Path:
    return write_lora(tmp_path / "tiny.safetensors", random_lora(parts.high_noise_model, RANK, seed=1))


def test_cli_lora_high_lands_in_the_sidecar(cli, tiny_lora, tmp_path):
    out = tmp_path / "a.mp4"
    assert generate.main([*cli, "--save_file", str(out), "--lora_high", f"{tiny_lora}:0.5", "--base_seed", "1"]) == 0
    meta = json.loads(sidecar_path(out).read_text())
    digest = hashlib.sha256(tiny_lora.read_bytes()).hexdigest()
    assert meta["loras"] == {HIGH: [{"file": "tiny.safetensors", "sha256": digest, "scale": 0.5}], LOW: []}
    assert meta["seconds"]["lora_fuse"] >= 0


def test_cli_missing_lora_is_exit_2_before_loading(cli, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(engine, "build_engine", lambda *a: pytest.fail("the model must not load"))
    assert generate.main([*cli, "--save_file", str(tmp_path / "a.mp4"), "--lora", "nope.safetensors:2"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: --lora nope.safetensors:2: nope.safetensors is not a readable file; "
        "give FILE[:SCALE] of a LoRA .safetensors\n"
    )


# ----------------------------------------------------------------------------------- batch items
def test_batch_groups_items_by_lora_and_resume_compares_them(cli, tiny_lora, tmp_path, monkeypatch):
    """Base items first on the loaded model, then one model per LoRA set; a changed LoRA is a new item."""
    block_7 = {"blocks.7.attn1.to_q": (torch.zeros(RANK, 24), torch.zeros(24, RANK))}  # the experts have 2 blocks
    far = write_lora(tmp_path / "far.safetensors", block_7)
    lines = [
        "a red square moving left",
        json.dumps({"prompt": "a blue circle moving right", "lora": str(tiny_lora)}),
        "a green triangle moving up",
        json.dumps({"prompt": "two shapes bouncing", "lora_low": f"{tiny_lora}:0.5"}),
        json.dumps({"prompt": "a cat walking on grass", "lora": str(far)}),
    ]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(lines) + "\n")
    args = [*cli[:-2], "--prompt_file", str(prompts), "--save_dir", str(tmp_path / "out")]
    loads, original = [], engine.build_engine
    monkeypatch.setattr(engine, "build_engine", lambda *a: (loads.append(1), original(*a))[1])
    assert generate.main(args) == 1  # the LoRA for block 7 fails its item only
    records = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records if r["status"] == "done"] == [0, 2, 1, 3]
    (failed,) = [r for r in records if r["status"] == "failed"]
    assert failed["index"] == 4 and "blocks.7.attn1.to_q.lora_A.weight matches no layer" in failed["error"]
    assert len(loads) == 4  # one per set (base, then three LoRA sets): levers must see the fused weights
    sidecar = json.loads(next((tmp_path / "out").glob("0003_*.json")).read_text())
    assert [e["scale"] for e in sidecar["loras"][LOW]] == [0.5] and sidecar["loras"][HIGH] == []

    lines[3] = json.dumps({"prompt": "two shapes bouncing", "lora_low": f"{tiny_lora}:0.6"})
    prompts.write_text("\n".join(lines[:4]) + "\n")
    assert generate.main(args) == 0
    again = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()][5:]
    statuses = sorted((r["index"], r["status"]) for r in again)
    assert statuses == [(0, "skipped"), (1, "skipped"), (2, "skipped"), (3, "done")]


# ----------------------------------------------------------------------------------- distill pairs (--lora_dir)
def other_pairs(pairs, factor: float):
    """A second LoRA with the same layers and different numbers (the low-noise file of a pair)."""
    return {k: (d.flip(0) * factor, u) for k, (d, u) in pairs.items()}


def comfy_tensors(pairs, alpha: float = ALPHA) -> dict[str, torch.Tensor]:
    """ComfyUI / LightX2V naming: lora_down/lora_up/alpha under ``diffusion_model.``, with the zeroed norm
    ``.diff`` and the ``.diff_b`` bias keys those releases also carry."""
    tensors = lora_tensors(pairs, "wan", alpha)
    tensors["diffusion_model.blocks.0.norm3.diff"] = torch.zeros(24)
    tensors["diffusion_model.blocks.0.norm3.diff_b"] = torch.zeros(24)
    return tensors


@pytest.mark.parametrize(
    ("high", "low"),
    [
        ("high_noise_model.safetensors", "low_noise_model.safetensors"),  # Wan2.2-Lightning
        (
            "wan2.2_t2v_A14b_high_noise_lora_rank64_lightx2v_4step_1217.safetensors",  # LightX2V
            "wan2.2_t2v_A14b_low_noise_lora_rank64_lightx2v_4step_1217.safetensors",
        ),
        (
            "Wan2.2-Lightning_T2V-A14B-4steps-lora_HIGH_fp16.safetensors",
            "Wan2.2-Lightning_T2V-A14B-4steps-lora_LOW_fp16.safetensors",
        ),
    ],
)
def test_lora_dir_puts_each_file_of_a_pair_on_its_expert(pipe, pairs, tmp_path, high, low):
    low_pairs = other_pairs(pairs, 0.5)
    save_file(comfy_tensors(pairs), tmp_path / high)
    save_file(comfy_tensors(low_pairs), tmp_path / low)
    (tmp_path / "README.md").write_text("not a LoRA")
    specs = lora_specs({"lora_dir": f"{tmp_path}:0.8", "task": "t2v-A14B"})
    assert [(s.path.name, s.scale, s.experts) for s in specs] == [(high, 0.8, (HIGH,)), (low, 0.8, (LOW,))]
    before = {name: weights(e) for name, e in pipe.experts.items()}
    files = check_loras(specs, ckpt_dir=REPO / "models" / "t2v-tiny")
    assert [f.format for f in files] == ["wan", "wan"]
    apply_loras(pipe, files)
    for name, used in ((HIGH, pairs), (LOW, low_pairs)):
        after = pipe.experts[name].state_dict()
        for module, (down, up) in used.items():
            expected = before[name][f"{module}.weight"] + 0.8 * (ALPHA / RANK) * up @ down
            torch.testing.assert_close(after[f"{module}.weight"], expected, rtol=0, atol=1e-6)


def test_lora_dir_picks_the_task_pair_out_of_a_release_folder(pairs, tmp_path):
    """LightX2V's folder holds t2v and i2v pairs; the task picks; without one the choice is the user's."""
    for kind in ("t2v", "i2v"):
        for expert in ("high", "low"):
            save_file(
                lora_tensors(pairs, "wan", ALPHA), tmp_path / f"wan2.2_{kind}_A14b_{expert}_noise_lora.safetensors"
            )
    specs = lora_specs({"lora_dir": str(tmp_path), "task": "t2v-A14B"})
    assert [s.path.name for s in specs] == [
        "wan2.2_t2v_A14b_high_noise_lora.safetensors",
        "wan2.2_t2v_A14b_low_noise_lora.safetensors",
    ]
    with pytest.raises(ConfigError, match="2 high-noise LoRAs .*; pick one with --lora_high FILE"):
        lora_specs({"lora_dir": str(tmp_path), "task": "my_task.json"})


def test_lora_dir_takes_the_one_folder_down_layout(pairs, tmp_path):
    """LightX2V's configs point at loras/high_noise_model/<file> and loras/low_noise_model/<file>."""
    for folder in ("high_noise_model", "low_noise_model"):
        (tmp_path / folder).mkdir()
        save_file(lora_tensors(pairs, "wan", ALPHA), tmp_path / folder / "model.safetensors")
    specs = lora_specs({"lora_dir": str(tmp_path)})
    assert [(s.path.parent.name, s.experts) for s in specs] == [
        ("high_noise_model", (HIGH,)),
        ("low_noise_model", (LOW,)),
    ]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ((), "no high-noise LoRA .* among: no .safetensors file; pass the files with --lora_high and --lora_low"),
        (("high_noise_model.safetensors",), "no low-noise LoRA .* among: high_noise_model.safetensors"),
    ],
)
def test_lora_dir_without_a_pair_is_refused(pairs, tmp_path, files, message):
    for name in files:
        save_file(lora_tensors(pairs, "wan", ALPHA), tmp_path / name)
    with pytest.raises(ConfigError, match=message):
        lora_specs({"lora_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="not a folder"):
        lora_specs({"lora_dir": str(tmp_path / "nope")})


def test_a_high_file_given_to_the_low_expert_is_flagged(pairs, tmp_path, caplog):
    path = write_lora(tmp_path / "high_noise_model.safetensors", pairs)
    check_loras([LoraSpec(path, 1.0, (LOW,))])
    assert "named for the high_noise expert but goes on low_noise; meant --lora_high?" in caplog.text


@pytest.mark.parametrize(
    ("module", "shape", "message"),
    [
        ("blocks.0.attn1.to_q", (RANK, 64), "has shape \\(4, 64\\) .* another model size"),  # a wider model
        ("blocks.40.attn1.to_q", (RANK, 128), "blocks.40.attn1.to_q.lora_A.weight matches no layer"),  # a deeper one
    ],
)
def test_a_lora_for_another_model_is_refused_before_loading(tmp_path, monkeypatch, module, shape, message):
    """Checked against the checkpoint's expert configs on weightless experts: no weight is read."""
    monkeypatch.setattr(WanT2V, "from_pretrained", lambda *a, **k: pytest.fail("the model must not load"))
    down, up = torch.zeros(shape), torch.zeros(shape[1], RANK)
    path = write_lora(tmp_path / "high_noise_model.safetensors", {module: (down, up)})
    with pytest.raises(ConfigError, match=message):
        check_loras([LoraSpec(path, 1.0, (HIGH,))], ckpt_dir=REPO / "models" / "t2v-tiny")


def test_the_distill_preset_without_loras_is_flagged(caplog):
    warn_if_distilled_without_loras("lightning", [LoraSpec(Path("a.safetensors"), 1.0, BOTH)])
    warn_if_distilled_without_loras("fast", [])
    assert not caplog.records
    warn_if_distilled_without_loras("lightning", [])
    assert len(caplog.records) == 1 and "--preset lightning samples the step-distilled schedule" in caplog.text


def test_cli_lora_dir_fuses_the_pair_and_the_sidecar_names_both(cli, parts, tmp_path):
    pair = tmp_path / "pair"
    pair.mkdir()
    for name, seed in (("high_noise_model", 1), ("low_noise_model", 2)):
        save_file(
            lora_tensors(random_lora(parts.high_noise_model, RANK, seed=seed), "wan", ALPHA),
            pair / f"{name}.safetensors",
        )
    out = tmp_path / "a.mp4"
    argv = [*cli, "--save_file", str(out), "--lora_dir", f"{pair}:0.5", "--sample_solver", "euler_distill"]
    assert generate.main([*argv, "--sample_steps", "4", "--sample_shift", "5", "--sample_guide_scale", "1"]) == 0
    meta = json.loads(sidecar_path(out).read_text())
    assert [(e["file"], e["scale"]) for e in meta["loras"][HIGH]] == [("high_noise_model.safetensors", 0.5)]
    assert [(e["file"], e["scale"]) for e in meta["loras"][LOW]] == [("low_noise_model.safetensors", 0.5)]


def test_cli_lora_for_another_model_is_exit_2_before_loading(cli, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(engine, "build_engine", lambda *a: pytest.fail("the model must not load"))
    wide = {"blocks.0.attn1.to_q": (torch.zeros(RANK, 5120), torch.zeros(5120, RANK))}  # an A14B-size layer
    path = write_lora(tmp_path / "a14b.safetensors", wide)
    assert generate.main([*cli, "--save_file", str(tmp_path / "a.mp4"), "--lora_high", str(path)]) == 2
    assert "has shape (4, 5120)" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- a one-model task (TI2V-5B)
@pytest.fixture(scope="module")
def ti2v_lora(ti2v_parts, tmp_path_factory) -> Path:
    pairs = random_lora(ti2v_parts.high_noise_model, RANK, seed=4)
    return write_lora(tmp_path_factory.mktemp("ti2v-lora") / "style.safetensors", pairs)


@pytest.mark.parametrize("layout", ["official", "diffusers"])
def test_cli_lora_on_a_one_model_task_fuses_into_its_model(ti2v_task, ti2v_ckpts, ti2v_lora, tmp_path, layout):
    cli = ["--task", str(ti2v_task), "--ckpt_dir", str(ti2v_ckpts[layout]), "--device", "cpu", "--quiet"]
    out = tmp_path / "a.mp4"
    assert generate.main([*cli, "--prompt", "a cat", "--save_file", str(out), "--lora", f"{ti2v_lora}:0.5"]) == 0
    meta = json.loads(sidecar_path(out).read_text())
    assert [(e["file"], e["scale"]) for e in meta["loras"][HIGH]] == [("style.safetensors", 0.5)]
    assert meta["loras"][LOW] == []


@pytest.mark.parametrize("flag", ["--lora_high", "--lora_low", "--lora_dir"])
def test_expert_flags_on_a_one_model_task_are_exit_2_before_loading(
    ti2v_task, ti2v_ckpts, ti2v_lora, tmp_path, monkeypatch, capsys, flag
):
    monkeypatch.setattr(engine, "build_engine", lambda *a: pytest.fail("the model must not load"))
    value = ti2v_lora.parent if flag == "--lora_dir" else ti2v_lora
    if flag == "--lora_dir":  # a folder with a pair, as the releases lay it out
        for name in ("high_noise_model", "low_noise_model"):
            (ti2v_lora.parent / f"{name}.safetensors").write_bytes(ti2v_lora.read_bytes())
    cli = ["--task", str(ti2v_task), "--ckpt_dir", str(ti2v_ckpts["official"]), "--device", "cpu", "--quiet"]
    assert generate.main([*cli, "--prompt", "a cat", "--save_file", str(tmp_path / "a.mp4"), flag, str(value)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: task ti2v-5B has one model") and "with --lora" in err and err.count("\n") == 1


@pytest.mark.parametrize("layout", ["official", "diffusers"])
def test_a_lora_for_another_model_is_refused_against_a_one_model_checkpoint(ti2v_ckpts, tmp_path, layout):
    wide = {"blocks.0.attn1.to_q": (torch.zeros(RANK, 5120), torch.zeros(5120, RANK))}
    path = write_lora(tmp_path / "a14b.safetensors", wide)
    with pytest.raises(ConfigError, match="has shape \\(4, 5120\\)"):
        check_loras([LoraSpec(path, 1.0, (HIGH,))], ckpt_dir=ti2v_ckpts[layout])
