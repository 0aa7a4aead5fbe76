"""The conditioning image: reading as diffusers' load_image does, the refusals, and the official sizing."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from diffusers.utils import load_image as diffusers_load_image
from PIL import Image

import wan.image
from wan.config import load_task_config
from wan.errors import ConfigError
from wan.image import (
    aspect_size,
    closest_ratio_size,
    decode_image,
    frame_image,
    image_tensor,
    load_image,
    prepare_image,
    video_size,
)

I2V = load_task_config("i2v-A14B")
TI2V = load_task_config("ti2v-5B")


def picture(width: int = 40, height: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def save(tmp_path, image: Image.Image, name: str = "in.png", **kw):
    path = tmp_path / name
    image.save(path, **kw)
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.fromarray(picture()),
        lambda: Image.fromarray(picture()).convert("L"),
        lambda: Image.fromarray(picture()).convert("P"),
        lambda: Image.fromarray(picture()).convert("RGBA"),  # fully opaque
        lambda: Image.fromarray(picture()).convert("CMYK"),
    ],
    ids=["rgb", "grey", "palette", "opaque-rgba", "cmyk"],
)
def test_convertible_images_read_as_diffusers_load_image_reads_them(tmp_path, make):
    path = save(tmp_path, make(), "in.tif" if make().mode == "CMYK" else "in.png")
    ours = load_image(path)
    assert ours.mode == "RGB"
    assert np.array_equal(np.asarray(ours), np.asarray(diffusers_load_image(str(path))))


def test_exif_orientation_is_applied_like_diffusers(tmp_path):
    image = Image.fromarray(picture(40, 24))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = save(tmp_path, image, "in.jpg", exif=exif)
    ours = load_image(path)
    assert ours.size == (24, 40)
    assert np.array_equal(np.asarray(ours), np.asarray(diffusers_load_image(str(path))))


def transparent(mode: str) -> Image.Image:
    rgba = Image.fromarray(np.dstack([picture(), np.full((24, 40), 255, np.uint8)]), "RGBA")
    rgba.putpixel((3, 3), (0, 0, 0, 0))
    return rgba.convert(mode) if mode != "RGBA" else rgba


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: transparent("RGBA"), "transparent pixels"),
        (lambda: transparent("LA"), "transparent pixels"),
        (lambda: Image.fromarray(np.full((24, 40), 40000, np.uint16)), "more than 8 bits"),
        (lambda: Image.fromarray(np.full((24, 40), 70000, np.int32)), "more than 8 bits"),
    ],
    ids=["rgba", "grey-alpha", "16-bit", "32-bit"],
)
def test_images_that_rgb_would_change_are_refused(tmp_path, make, message):
    path = save(tmp_path, make())
    with pytest.raises(ConfigError, match=message) as err:
        load_image(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_palette_with_a_transparent_index_is_refused(tmp_path):
    image = Image.fromarray(picture()).convert("P")
    image.info["transparency"] = image.getpixel((0, 0))
    path = save(tmp_path, image, transparency=image.getpixel((0, 0)))
    with pytest.raises(ConfigError, match="transparent pixels"):
        load_image(path)


def test_bytes_are_read_and_refused_as_the_file_is(tmp_path, monkeypatch):
    """An upload (bytes and its file name) gets the line the CLI gives for a file of that name."""
    rgba = Image.fromarray(picture()).convert("RGBA")
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    files = {
        "good.png": save(tmp_path, Image.fromarray(picture()), "good.png"),
        "clear.png": save(tmp_path, rgba, "clear.png"),
        "deep.png": save(tmp_path, Image.fromarray(np.full((24, 40), 40000, np.uint16)), "deep.png"),
        "notes.png": tmp_path / "notes.png",
    }
    files["notes.png"].write_text("not an image")
    monkeypatch.chdir(tmp_path)  # the CLI names a file as it was given: here by its bare name
    for name, path in files.items():
        try:
            expected = np.asarray(load_image(name))
        except ConfigError as exc:
            with pytest.raises(ConfigError) as err:
                decode_image(io.BytesIO(path.read_bytes()), name)
            assert str(err.value) == str(exc) and "\n" not in str(exc)
        else:
            assert np.array_equal(np.asarray(decode_image(io.BytesIO(path.read_bytes()), name)), expected)


def test_missing_unreadable_and_truncated_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_image(text)
    whole = save(tmp_path, Image.fromarray(picture(64, 64)), "whole.png").read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ConfigError, match="cannot be read"):
        load_image(cut)


def test_huge_images_are_refused_from_the_header(tmp_path, monkeypatch):
    path = save(tmp_path, Image.new("1", (120, 100)))
    monkeypatch.setattr(wan.image, "MAX_PIXELS", 100 * 100)
    with pytest.raises(ConfigError, match="120\\*100 pixels"):
        load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50 * 50)  # PIL's own bomb check, below ours
    monkeypatch.setattr(wan.image, "MAX_PIXELS", 10**9)
    with pytest.raises(ConfigError, match="too large to decode safely"):
        load_image(path)


def official_i2v_size(image_w: int, image_h: int, area: int) -> tuple[int, int]:
    """The official image-to-video size formula, written with numpy as the release writes it."""
    aspect = image_h / image_w
    lat_h = round(np.sqrt(area * aspect) // 8 // 2 * 2)
    lat_w = round(np.sqrt(area / aspect) // 8 // 2 * 2)
    return lat_w * 8, lat_h * 8


@pytest.mark.parametrize("size", I2V.sizes)
def test_i2v_size_follows_the_image_aspect_within_the_area(size):
    rng = np.random.default_rng(1)
    width, height = I2V.parse_size(size)
    for image_w, image_h in [(1920, 1080), (1080, 1920), (1024, 768), (512, 512)] + [
        tuple(rng.integers(64, 4000, 2)) for _ in range(50)
    ]:
        out = aspect_size((int(image_w), int(image_h)), width * height, 8, 2)
        assert out == official_i2v_size(int(image_w), int(image_h), width * height)
        assert out[0] % 16 == 0 and out[1] % 16 == 0 and out[0] * out[1] <= width * height
    # an image of the size's own shape: the official float rounding may take one patch off (832*480 -> 832*464)
    own = aspect_size((width, height), width * height, 8, 2)
    assert own == official_i2v_size(width, height, width * height) and width - own[0] <= 16 and height - own[1] <= 16


def test_ti2v_size_is_the_closest_ratio_multiple_of_32():
    rng = np.random.default_rng(2)
    area = 1280 * 704
    assert closest_ratio_size((1280, 704), area, 32) == (1280, 704)
    assert closest_ratio_size((704, 1280), area, 32) == (704, 1280)
    for image_w, image_h in (tuple(int(v) for v in rng.integers(64, 4000, 2)) for _ in range(50)):
        w, h = closest_ratio_size((image_w, image_h), area, 32)
        assert w % 32 == 0 and h % 32 == 0 and w * h <= area
        # the official rule: round the width down first, or the height; keep the nearer ratio (height-first on a tie)
        ratio = image_w / image_h
        w1 = int(np.sqrt(area * ratio) // 32 * 32)
        h2 = int(area / np.sqrt(area * ratio) // 32 * 32)
        candidates = [(w1, area // w1 // 32 * 32), (area // h2 // 32 * 32, h2)]
        off = [max(ratio * c[1] / c[0], c[0] / c[1] / ratio) for c in candidates]
        assert (w, h) == candidates[0 if off[0] < off[1] else 1]


def test_video_size_without_an_image_is_the_size_given():
    assert video_size(TI2V, "704*1280", None) == (704, 1280)
    with pytest.raises(ConfigError, match="not supported"):
        video_size(I2V, "1280*704", Image.new("RGB", (64, 64)))


def test_a_too_narrow_image_is_refused():
    with pytest.raises(ConfigError, match="too narrow"):
        video_size(I2V, "832*480", Image.new("RGB", (20000, 10)))


def test_ti2v_frames_by_centre_crop_and_i2v_by_stretch():
    halves = np.zeros((200, 400, 3), np.uint8)
    halves[:, :200, 0] = 255  # red left half, blue right half
    halves[:, 200:, 2] = 255
    image = Image.fromarray(halves)
    cropped = np.asarray(frame_image(TI2V, image, 96, 64))
    assert cropped.shape == (64, 96, 3)
    # covered at 128*64 and cut to the middle 96 columns: the colour edge stays in the middle
    assert (cropped[:, :40, 0] > 250).all() and (cropped[:, 56:, 2] > 250).all()
    assert frame_image(I2V, image, 96, 64) is image


def test_prepare_image_gives_pixels_in_range_at_the_video_size(tmp_path):
    config = dataclasses.replace(I2V, sizes=("64*32",), default_size="64*32")
    path = save(tmp_path, Image.fromarray(picture(100, 40)))
    pixels, (width, height) = prepare_image(config, path, None)
    assert (width, height) == official_i2v_size(100, 40, 64 * 32)
    assert pixels.shape == (1, 3, height, width) and pixels.dtype == torch.float32
    assert pixels.min() >= -1 and pixels.max() <= 1
    assert torch.equal(pixels, image_tensor(load_image(path), width, height))
