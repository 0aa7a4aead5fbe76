"""wan.checkpoints: both layouts of each model load to the same weights; dtypes; one-line errors for broken files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file
from tiny_models import (
    save_diffusers_layout,
    save_official_layout,
    tiny_i2v_parts,
    tiny_parts_official,
    tiny_ti2v_parts,
)
from transformers import UMT5EncoderModel

from wan.checkpoints import (
    detect_layout,
    load_components,
)
from wan.errors import CheckpointError

PARTS = ("text_encoder", "vae", "high_noise_model", "low_noise_model")
PROMPT = "a red square moving left and a blue circle moving right"
SHARD1 = "diffusion_pytorch_model-00001-of-00002.safetensors"


@pytest.fixture(scope="module")
def tiny():
    return tiny_parts_official(seed=0)


@pytest.fixture(scope="module")
def roots(tiny, tmp_path_factory):
    base = tmp_path_factory.mktemp("ckpt")
    return {
        "diffusers": save_diffusers_layout(tiny, base / "diffusers"),
        "official": save_official_layout(tiny, base / "official", shards=2),
    }


@pytest.fixture(scope="module")
def loaded(roots):
    return {layout: load_components(root) for layout, root in roots.items()}


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def error_of(root: Path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        load_components(root, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message


@pytest.fixture
def official_copy(roots, tmp_path) -> Path:
    return Path(shutil.copytree(roots["official"], tmp_path / "official"))


@pytest.fixture
def diffusers_copy(roots, tmp_path) -> Path:
    return Path(shutil.copytree(roots["diffusers"], tmp_path / "diffusers"))


def shard_of(folder: Path, name: str) -> Path:
    weight_map = json.loads((folder / "diffusion_pytorch_model.safetensors.index.json").read_text())["weight_map"]
    return folder / weight_map[name]


def rewrite_shard(folder: Path, name: str, new_value: torch.Tensor | None) -> None:
    """Replace (or with None drop) tensor ``name`` in its shard, keeping the index consistent."""
    shard = shard_of(folder, name)
    tensors = load_file(shard)
    if new_value is None:
        del tensors[name]
        index_path = folder / "diffusion_pytorch_model.safetensors.index.json"
        index = json.loads(index_path.read_text())
        del index["weight_map"][name]
        index_path.write_text(json.dumps(index))
    else:
        tensors[name] = new_value
    save_file(tensors, shard)


# ---------------------------------------------------------------------------------------------- layouts


def test_detect_layout(roots, tmp_path):
    assert detect_layout(roots["official"]) == "official"
    assert detect_layout(roots["diffusers"]) == "diffusers"
    with pytest.raises(CheckpointError, match="high_noise_model/ and low_noise_model/"):
        detect_layout(tmp_path)


def test_layouts_load_identical_weights(tiny, loaded):
    official, diffusers = loaded["official"], loaded["diffusers"]
    assert (official.layout, diffusers.layout) == ("official", "diffusers")
    for name in PARTS:
        assert_same_state(getattr(official, name), getattr(diffusers, name))
        assert_same_state(getattr(official, name), getattr(tiny, name))
    te = official.text_encoder
    assert te.shared.weight is te.encoder.embed_tokens.weight
    for key in ("num_attention_heads", "attention_head_dim", "text_dim", "ffn_dim", "num_layers", "patch_size"):
        assert official.high_noise_model.config[key] == diffusers.high_noise_model.config[key], key
    assert official.high_noise_model.config.text_dim == 32  # inferred: the official config.json has no text_dim


def test_layouts_give_identical_outputs(loaded):
    official, diffusers = loaded["official"], loaded["diffusers"]
    ids = official.tokenizer([PROMPT], return_tensors="pt", padding="max_length", max_length=24)
    assert torch.equal(
        ids.input_ids, diffusers.tokenizer([PROMPT], return_tensors="pt", padding="max_length", max_length=24).input_ids
    )
    with torch.no_grad():
        a = official.text_encoder(ids.input_ids, attention_mask=ids.attention_mask).last_hidden_state
        b = diffusers.text_encoder(ids.input_ids, attention_mask=ids.attention_mask).last_hidden_state
        assert torch.equal(a, b)
        torch.manual_seed(0)
        latent, text = torch.randn(1, 16, 3, 8, 8), torch.randn(1, 7, 32)
        t = torch.tensor([900.0])
        for name in ("high_noise_model", "low_noise_model"):
            out_a = getattr(official, name)(latent, t, text, return_dict=False)[0]
            out_b = getattr(diffusers, name)(latent, t, text, return_dict=False)[0]
            assert torch.equal(out_a, out_b), name


def test_unsharded_official_expert(tiny, roots, tmp_path):
    root = save_official_layout(tiny, tmp_path / "single", shards=1)
    assert (root / "high_noise_model" / "diffusion_pytorch_model.safetensors").is_file()
    assert_same_state(load_components(root).high_noise_model, tiny.high_noise_model)


# ---------------------------------------------------------------------------------------------- Wan2.2 family

WAN22 = {"i2v": tiny_i2v_parts, "ti2v": tiny_ti2v_parts}


@pytest.fixture(scope="module", params=sorted(WAN22))
def wan22(request, tmp_path_factory):
    """(parts, {layout: root}, {layout: loaded}) of a tiny I2V-A14B-like or TI2V-5B-like checkpoint."""
    parts = WAN22[request.param](seed=0)
    base = tmp_path_factory.mktemp(request.param)
    roots = {
        "official": save_official_layout(parts, base / "official", shards=2),
        "diffusers": save_diffusers_layout(parts, base / "diffusers"),
    }
    return parts, roots, {layout: load_components(root) for layout, root in roots.items()}


def test_wan22_layouts_on_disk(wan22):
    parts, roots, _ = wan22
    official, diffusers = roots["official"], roots["diffusers"]
    if parts.low_noise_model is None:  # TI2V-5B: one model at the root, the Wan2.2 VAE
        assert (official / "config.json").is_file() and (official / "Wan2.2_VAE.pth").is_file()
        assert not (official / "high_noise_model").exists() and not (diffusers / "transformer_2").exists()
        assert json.loads((official / "config.json").read_text())["model_type"] == "ti2v"
    else:  # I2V-A14B: two experts taking 36 channels, the Wan2.1 VAE
        assert (official / "low_noise_model" / "config.json").is_file() and (official / "Wan2.1_VAE.pth").is_file()
        config = json.loads((official / "high_noise_model" / "config.json").read_text())
        assert (config["model_type"], config["in_dim"], config["out_dim"]) == ("i2v", 36, 16)
        assert json.loads((diffusers / "model_index.json").read_text())["_class_name"] == "WanImageToVideoPipeline"


def test_wan22_layouts_load_identical_weights(wan22):
    parts, _, loaded = wan22
    official, diffusers = loaded["official"], loaded["diffusers"]
    assert (official.layout, diffusers.layout) == ("official", "diffusers")
    for name in PARTS:
        reference = getattr(parts, name)
        if reference is None:
            assert getattr(official, name) is None and getattr(diffusers, name) is None
            continue
        assert_same_state(getattr(official, name), reference)
        assert_same_state(getattr(diffusers, name), reference)
    assert len(official.experts) == len(diffusers.experts) == (1 if parts.low_noise_model is None else 2)
    public = {k: v for k, v in parts.vae.config.items() if not k.startswith("_")}
    for components in (official, diffusers):
        assert {k: components.vae.config[k] for k in public} == public  # latents_mean/std included


def test_wan22_layouts_give_identical_outputs(wan22):
    parts, _, loaded = wan22
    official, diffusers = loaded["official"], loaded["diffusers"]
    config = parts.high_noise_model.config
    torch.manual_seed(0)
    latent, text, t = torch.randn(1, config.in_channels, 2, 4, 4), torch.randn(1, 5, 32), torch.tensor([700.0])
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        references = [m for m in (parts.high_noise_model, parts.low_noise_model) if m is not None]
        for a, b, reference in zip(official.experts, diffusers.experts, references, strict=True):
            out = reference(latent, t, text, return_dict=False)[0]  # the same weights, never on disk
            assert torch.equal(a(latent, t, text, return_dict=False)[0], out)
            assert torch.equal(b(latent, t, text, return_dict=False)[0], out)
        z = official.vae.encode(video).latent_dist.mode()
        assert z.shape[1] == parts.vae.config.z_dim
        assert torch.equal(z, diffusers.vae.encode(video).latent_dist.mode())
        assert torch.equal(z, parts.vae.encode(video).latent_dist.mode())
        assert torch.equal(official.vae.decode(z).sample, diffusers.vae.decode(z).sample)


# ---------------------------------------------------------------------------------------------- dtypes


def test_bf16_keeps_fp32_modules(roots):
    official = load_components(roots["official"], transformer_dtype=torch.bfloat16, text_encoder_dtype=torch.float16)
    diffusers = load_components(roots["diffusers"], transformer_dtype=torch.bfloat16, text_encoder_dtype=torch.float16)
    keep = WanTransformer3DModel._keep_in_fp32_modules
    for name in ("high_noise_model", "low_noise_model"):
        expert = getattr(official, name)
        n_fp32 = 0
        for key, param in expert.named_parameters():
            fp32 = any(m in key.split(".") for m in keep)
            n_fp32 += fp32
            assert param.dtype == (torch.float32 if fp32 else torch.bfloat16), key
        assert n_fp32 > 0
        assert expert.rope.freqs_cos.dtype == torch.float32
        assert_same_state(expert, getattr(diffusers, name))  # same as from_pretrained(torch_dtype=bf16)
    assert official.vae.dtype == torch.float32
    # transformers keeps its fp32 islands (T5's wo) for fp16 only
    assert_same_state(official.text_encoder, diffusers.text_encoder)
    dtypes = {k: v.dtype for k, v in official.text_encoder.state_dict().items()}
    assert {k for k, d in dtypes.items() if d == torch.float32} == {k for k in dtypes if ".wo." in k}


def test_none_dtype_keeps_disk_dtype(tiny, tmp_path):
    root = save_official_layout(tiny, tmp_path / "bf16_t5", t5_dtype=torch.bfloat16)  # as released
    components = load_components(root)
    assert {p.dtype for p in components.text_encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in components.high_noise_model.parameters()} == {torch.float32}


# ---------------------------------------------------------------------------------------------- errors


def test_error_missing_folder(tmp_path):
    assert "does not exist" in error_of(tmp_path / "nowhere")


def test_error_neither_layout(tmp_path):
    (tmp_path / "something").mkdir()
    message = error_of(tmp_path)
    assert "high_noise_model/" in message and "transformer_2/" in message and "something/" in message


@pytest.mark.parametrize(
    "relative",
    ["Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth", "high_noise_model/config.json", f"low_noise_model/{SHARD1}"],
)
def test_error_missing_file(official_copy, relative):
    (official_copy / relative).unlink()
    message = error_of(official_copy)
    assert Path(relative).name in message and "re-download" in message


def test_error_missing_tokenizer(official_copy):
    shutil.rmtree(official_copy / "google" / "umt5-xxl")
    assert "google/umt5-xxl" in error_of(official_copy)


def test_error_truncated_shard(official_copy):
    shard = official_copy / "high_noise_model" / SHARD1
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    message = error_of(official_copy)
    assert str(shard) in message and "truncated" in message


@pytest.mark.parametrize("name", ["Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth"])
def test_error_truncated_pth(official_copy, name):
    path = official_copy / name
    path.write_bytes(path.read_bytes()[:-100])
    assert str(path) in error_of(official_copy)


def test_error_wrong_shape(official_copy):
    folder = official_copy / "low_noise_model"
    rewrite_shard(folder, "blocks.1.self_attn.q.weight", torch.zeros(24, 23))
    message = error_of(official_copy)
    assert "blocks.1.self_attn.q.weight" in message and "[24, 23]" in message and "[24, 24]" in message


def test_error_missing_key(official_copy):
    rewrite_shard(official_copy / "high_noise_model", "blocks.1.ffn.2.bias", None)
    message = error_of(official_copy)
    assert "blocks.1.ffn.2.bias" in message and "missing" in message


def test_error_unexpected_key(official_copy):
    folder = official_copy / "high_noise_model"
    shard = folder / SHARD1
    tensors = load_file(shard)
    tensors["blocks.0.adapter.weight"] = torch.zeros(2)
    save_file(tensors, shard)
    assert "blocks.0.adapter.weight" in error_of(official_copy)


def test_error_t5_missing_key_and_shape(official_copy):
    path = official_copy / "models_t5_umt5-xxl-enc-bf16.pth"
    sd = torch.load(path, weights_only=True)
    torch.save({k: v for k, v in sd.items() if k != "blocks.1.ffn.fc1.weight"}, path)
    assert "blocks.1.ffn.fc1.weight" in error_of(official_copy)
    torch.save({**sd, "blocks.1.attn.o.weight": torch.zeros(32, 16)}, path)
    message = error_of(official_copy)
    assert "blocks.1.attn.o.weight" in message and "[32, 16]" in message


def test_error_vae_missing_key(official_copy):
    path = official_copy / "Wan2.1_VAE.pth"
    sd = torch.load(path, weights_only=True)
    torch.save({k: v for k, v in sd.items() if k != "decoder.upsamples.4.shortcut.weight"}, path)
    assert "decoder.upsamples.4.shortcut.weight" in error_of(official_copy)


def test_error_bad_official_config(official_copy):
    path = official_copy / "high_noise_model" / "config.json"
    config = json.loads(path.read_text())
    del config["dim"]
    path.write_text(json.dumps(config))
    message = error_of(official_copy)
    assert str(path) in message and "'dim'" in message


def test_errors_diffusers_layout(roots, diffusers_copy):
    weights = diffusers_copy / "transformer_2" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors["proj_out.weight"] = torch.zeros(64, 25)
    save_file(tensors, weights)
    message = error_of(diffusers_copy)
    assert "proj_out.weight" in message and "[64, 25]" in message
    weights.write_bytes(weights.read_bytes()[:1000])
    assert str(weights) in error_of(diffusers_copy)
    shutil.copy(roots["diffusers"] / "transformer_2" / weights.name, weights)
    (diffusers_copy / "vae" / "config.json").unlink()
    assert "vae/config.json" in error_of(diffusers_copy)
    shutil.rmtree(diffusers_copy / "text_encoder")
    assert "text_encoder" in error_of(diffusers_copy)


def test_text_encoder_class_is_umt5(loaded):
    assert isinstance(loaded["official"].text_encoder, UMT5EncoderModel)
