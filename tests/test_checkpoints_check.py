"""wan.checkpoints.check: what a folder holds, read from configs and headers, and one line for each misfit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import (
    save_diffusers_layout,
    save_official_layout,
    tiny_i2v_parts,
    tiny_parts_official,
    tiny_ti2v_parts,
)

from wan.checkpoints import (
    RELEASED_MODELS,
    check_checkpoint,
    describe_checkpoint,
    load_components,
)
from wan.errors import CheckpointError

KINDS = {"t2v": tiny_parts_official, "i2v": tiny_i2v_parts, "ti2v": tiny_ti2v_parts}
TASK_OF = {"t2v": "t2v-A14B", "i2v": "i2v-A14B", "ti2v": "ti2v-5B"}
LAYOUTS = ("official", "diffusers")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Each tiny kind in each layout: {(kind, layout): root}."""
    base = tmp_path_factory.mktemp("kinds")
    roots = {}
    for kind, build in KINDS.items():
        parts = build(seed=0)
        roots[kind, "official"] = save_official_layout(parts, base / kind / "official", shards=2)
        roots[kind, "diffusers"] = save_diffusers_layout(parts, base / kind / "diffusers")
    return roots


@pytest.fixture
def copy(saved, tmp_path):
    """A scratch copy of one saved checkpoint, to break."""

    def make(kind: str, layout: str) -> Path:
        return Path(shutil.copytree(saved[kind, layout], tmp_path / f"{kind}-{layout}"))

    return make


def one_line(call, *args, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_describe_each_kind(saved, kind, layout):
    info = describe_checkpoint(saved[kind, layout])
    expected = RELEASED_MODELS[TASK_OF[kind]]
    assert info.layout == layout
    assert (len(info.experts), info.in_channels, info.vae_z_dim) == (
        expected.experts,
        expected.in_channels,
        expected.vae_z_dim,
    )
    assert info.out_channels == info.vae_z_dim
    assert info.release.removesuffix("-Diffusers") == expected.release
    assert check_checkpoint(saved[kind, layout], expected) == info
    if layout == "official":
        assert info.vae == ("Wan2.2_VAE.pth" if kind == "ti2v" else "Wan2.1_VAE.pth")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    ("kind", "task", "words"),
    [
        ("t2v", "i2v-A14B", ("16 input channels", "text-to-video", "needs 36", "image-to-video", "I2V-A14B")),
        ("i2v", "t2v-A14B", ("36 input channels", "image-to-video", "needs 16", "text-to-video", "T2V-A14B")),
        ("t2v", "ti2v-5B", ("two experts", "runs one dense model", "TI2V-5B")),
        ("i2v", "ti2v-5B", ("two experts", "runs one dense model")),
        ("ti2v", "i2v-A14B", ("one dense model", "runs two experts", "I2V-A14B")),
        ("ti2v", "t2v-A14B", ("one dense model", "runs two experts")),
    ],
)
def test_wrong_model_for_the_task(saved, kind, task, words, layout):
    message = one_line(check_checkpoint, saved[kind, layout], RELEASED_MODELS[task])
    assert task in message and "--ckpt_dir" in message
    for word in words:
        assert word in message
    assert one_line(load_components, saved[kind, layout], expected=RELEASED_MODELS[task]) == message


def test_wan22_vae_with_a14b_experts(saved, copy):
    official = copy("t2v", "official")
    (official / "Wan2.1_VAE.pth").unlink()
    shutil.copy(saved["ti2v", "official"] / "Wan2.2_VAE.pth", official)
    message = one_line(describe_checkpoint, official)
    assert "Wan2.2_VAE.pth but no Wan2.1_VAE.pth" in message and "16 latent channels" in message
    (official / "Wan2.2_VAE.pth").rename(official / "Wan2.1_VAE.pth")  # the right name, the wrong VAE
    message = one_line(describe_checkpoint, official)
    assert "48 latent channels (Wan2.2 VAE)" in message and "16-channel latents" in message
    diffusers = copy("i2v", "diffusers")
    shutil.rmtree(diffusers / "vae")
    shutil.copytree(saved["ti2v", "diffusers"] / "vae", diffusers / "vae")
    message = one_line(load_components, diffusers)
    assert "48 latent channels (Wan2.2 VAE)" in message and "16-channel latents" in message


def test_wan21_vae_with_the_5b_model(saved, copy):
    official = copy("ti2v", "official")
    (official / "Wan2.2_VAE.pth").unlink()
    shutil.copy(saved["t2v", "official"] / "Wan2.1_VAE.pth", official)
    assert "Wan2.1_VAE.pth but no Wan2.2_VAE.pth" in one_line(describe_checkpoint, official)
    diffusers = copy("ti2v", "diffusers")
    shutil.rmtree(diffusers / "vae")
    shutil.copytree(saved["t2v", "diffusers"] / "vae", diffusers / "vae")
    message = one_line(check_checkpoint, diffusers, RELEASED_MODELS["ti2v-5B"])
    assert "16 latent channels (Wan2.1 VAE)" in message and "48-channel latents" in message


@pytest.mark.parametrize(
    ("kind", "layout", "remove", "named"),
    [
        ("i2v", "official", "low_noise_model", "low_noise_model"),
        ("i2v", "official", "Wan2.1_VAE.pth", "Wan2.1_VAE.pth"),
        ("ti2v", "official", "Wan2.2_VAE.pth", "Wan2.2_VAE.pth"),
        ("ti2v", "official", "config.json", "config.json"),
        ("ti2v", "official", "google", "google/umt5-xxl"),
        ("i2v", "diffusers", "transformer_2", "transformer_2"),
        ("ti2v", "diffusers", "vae", "vae"),
        ("ti2v", "diffusers", "tokenizer", "tokenizer"),
    ],
)
def test_missing_part(copy, kind, layout, remove, named):
    root = copy(kind, layout)
    path = root / remove
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    message = one_line(describe_checkpoint, root)
    assert named in message and "re-download" in message


def test_missing_root_model_is_not_a_checkpoint(copy):
    root = copy("ti2v", "official")
    for shard in root.glob("diffusion_pytorch_model*"):
        shard.unlink()
    message = one_line(describe_checkpoint, root)
    assert "not a Wan2.2 checkpoint" in message and "Wan2.2_VAE.pth" in message  # lists what it found


@pytest.mark.parametrize("kind", ["i2v", "ti2v"])
def test_corrupt_files(copy, kind):
    root = copy(kind, "official")
    shard = next(root.rglob("diffusion_pytorch_model-00001-of-00002.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-64])
    message = one_line(check_checkpoint, root, RELEASED_MODELS[TASK_OF[kind]])
    assert str(shard) in message and "truncated" in message
    root = copy(kind, "diffusers")
    vae = root / "vae" / "diffusion_pytorch_model.safetensors"
    vae.write_bytes(vae.read_bytes()[:100])
    assert str(vae) in one_line(describe_checkpoint, root)


def test_corrupt_wan22_vae(copy):
    root = copy("ti2v", "official")
    path = root / "Wan2.2_VAE.pth"
    path.write_bytes(path.read_bytes()[:-100])
    message = one_line(describe_checkpoint, root)
    assert str(path) in message and "truncated" in message


def test_experts_from_different_releases(saved, copy):
    root = copy("i2v", "official")
    shutil.rmtree(root / "low_noise_model")
    shutil.copytree(saved["t2v", "official"] / "low_noise_model", root / "low_noise_model")
    message = one_line(describe_checkpoint, root)
    assert "disagree" in message and "36" in message and "16" in message


def test_wan21_i2v_with_clip_is_refused(copy):
    official = copy("i2v", "official")
    shard = official / "high_noise_model" / "diffusion_pytorch_model-00001-of-00002.safetensors"
    tensors = load_file(shard)
    tensors["img_emb.proj.1.weight"] = torch.zeros(2, 2)
    save_file(tensors, shard)
    assert "CLIP" in one_line(describe_checkpoint, official)
    diffusers = copy("i2v", "diffusers")
    index = json.loads((diffusers / "model_index.json").read_text())
    index["image_encoder"] = ["transformers", "CLIPVisionModel"]
    (diffusers / "model_index.json").write_text(json.dumps(index))
    assert "image_encoder (CLIP)" in one_line(describe_checkpoint, diffusers)
