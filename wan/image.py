"""The conditioning image: read and check it, choose the video's size from it, and prepare its pixels.

Reading follows diffusers' ``load_image`` (EXIF orientation applied, then RGB), since diffusers is the
peer our videos are compared with; images whose RGB conversion would silently change what the user
sees are refused with a one-line ``ConfigError`` instead:

- transparency (RGBA/LA/PA, or a palette with a transparent index) where some pixel is not opaque:
  dropping alpha reveals whatever colour the transparent pixels hold;
- more than 8 bits per sample (16-bit grey ``I;16``, 32-bit ``I``/``F``): PIL clips them to 255;
- more than ``MAX_PIXELS`` pixels (decompression bombs): checked from the header, before decoding.

Grey-scale, palette, CMYK and opaque RGBA images are converted to RGB as both peers do (lossless).

The video's size follows the official CLI: ``--size`` gives the pixel area, the image's aspect ratio
the shape. ``i2v`` rounds ``sqrt(area * h / w)`` down to the VAE stride times the patch (the official
image-to-video formula) and stretches the image to it; ``ti2v`` picks the multiple-of-32 size whose
aspect ratio is closest to the image's (official ``best_output_size``), scales the image to cover it
and crops the centre. The pixels are then prepared by diffusers' ``VideoProcessor.preprocess``
(Lanczos resize to the size, scaled to [-1, 1]), exactly what ``WanImageToVideoPipeline`` does.

Reading, checking and sizing need only PIL, so bad images fail before torch or a model loads.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from wan.config import TaskConfig
from wan.errors import ConfigError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

MAX_PIXELS = 8192 * 8192
"""The largest image accepted (64 megapixels); the video is at most 1280*720, so nothing is lost."""
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
"""PIL modes with more than 8 bits per sample: RGB conversion clips them instead of scaling."""
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def load_image(path: str | Path) -> Image.Image:
    """The image at ``path`` as an 8-bit RGB PIL image, or a one-line ``ConfigError`` saying what to fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"image {path} does not exist; --image takes the path of a PNG, JPEG or WebP file")
    return decode_image(path, path)


def decode_image(source: Path | BinaryIO, name: str | Path) -> Image.Image:
    """``source`` (a file, or the bytes of one, as the service receives an upload) read and checked as
    ``load_image`` does; ``name`` is what the one-line errors call it, so an upload is refused in the
    words the CLI uses for the same file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
            _check_pixels(name, image.size)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ConfigError(f"image {name} is too large to decode safely ({exc}); downscale it below 8192*8192") from exc
    except UnidentifiedImageError as exc:  # PIL's message names the file object: for bytes, an address
        raise ConfigError(f"image {name} cannot be read (unknown image format); give a PNG, JPEG or WebP file") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"image {name} cannot be read ({reason}); give a valid PNG, JPEG or WebP file") from exc
    return to_rgb(ImageOps.exif_transpose(image), name)


def _check_pixels(path: str | Path, size: tuple[int, int]) -> None:
    width, height = size
    if width * height > MAX_PIXELS:
        raise ConfigError(
            f"image {path} has {width}*{height} pixels, more than the {MAX_PIXELS // 2**20} megapixels accepted; "
            "downscale it (the video is at most 1280*720)"
        )


def to_rgb(image: Image.Image, path: str | Path = "image") -> Image.Image:
    """RGB where the conversion keeps what the image shows; refuse transparency and wide samples."""
    if image.mode in WIDE_MODES:
        raise ConfigError(
            f"image {path} has {image.mode} samples (more than 8 bits); convert it to 8-bit RGB "
            "(e.g. `convert in.png -depth 8 out.png`)"
        )
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ALPHA_MODES and image.getchannel(image.mode[-1]).getextrema()[0] < 255:
        raise ConfigError(
            f"image {path} has transparent pixels; flatten it onto a background first "
            "(e.g. `convert in.png -background white -flatten out.png`)"
        )
    if image.mode != "RGB":
        logger.info("image %s: converting %s to RGB", path, image.mode)
        image = image.convert("RGB")
    return image


def aspect_size(image_size: tuple[int, int], area: int, stride: int, patch: int) -> tuple[int, int]:
    """(width, height) for image-to-video: the official formula, height and width multiples of stride*patch.

    ``latent = floor(sqrt(area * aspect) / stride / patch) * patch`` per side, with ``aspect`` = h / w
    for the height and its inverse for the width; the pixel side is ``latent * stride``.
    """
    width, height = image_size
    aspect = height / width
    lat_h = round(math.sqrt(area * aspect) // stride // patch * patch)
    lat_w = round(math.sqrt(area / aspect) // stride // patch * patch)
    return lat_w * stride, lat_h * stride


def closest_ratio_size(image_size: tuple[int, int], area: int, step: int) -> tuple[int, int]:
    """(width, height) for ti2v: multiples of ``step`` within ``area``, aspect ratio closest to the image's.

    Two candidates, one rounding the width down first and one the height; the one whose ratio is
    nearer (as a factor) wins, the height-first one on a tie (the official rule).
    """
    width, height = image_size
    ratio = width / height
    ideal_w = math.sqrt(area * ratio)
    ideal_h = area / ideal_w
    w1 = int(ideal_w // step * step)
    h1 = int(area / w1 // step * step)
    h2 = int(ideal_h // step * step)
    w2 = int(area / h2 // step * step)

    def off(w: int, h: int) -> float:
        return max(ratio / (w / h), (w / h) / ratio)

    return (w1, h1) if off(w1, h1) < off(w2, h2) else (w2, h2)


def cover_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale ``image`` (Lanczos) to cover width*height, then cut the centre: ti2v's official framing."""
    scale = max(width / image.width, height / image.height)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def video_size(config: TaskConfig, size: str | None, image: Image.Image | None) -> tuple[int, int]:
    """(width, height) of the video: ``--size`` as given without an image, else its area in the image's shape."""
    width, height = config.parse_size(size)
    if image is None:
        return width, height
    stride, patch = config.vae_stride[1], config.patch_size[1]
    if config.kind == "ti2v":
        out = closest_ratio_size(image.size, width * height, stride * patch)
    else:
        out = aspect_size(image.size, width * height, stride, patch)
    if min(out) < stride * patch:
        raise ConfigError(
            f"image of {image.width}*{image.height} is too narrow for a {size or config.default_size} video; "
            "crop it closer to the video's aspect ratio"
        )
    return out


def frame_image(config: TaskConfig, image: Image.Image, width: int, height: int) -> Image.Image:
    """The image framed for the video as the official CLI does: ti2v crops to the aspect, i2v stretches."""
    return cover_crop(image, width, height) if config.kind == "ti2v" else image


def image_tensor(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """[1, 3, height, width] float32 in [-1, 1]: diffusers' preprocessing (Lanczos resize, then 2x - 1)."""
    import torch
    from diffusers.video_processor import VideoProcessor

    return VideoProcessor().preprocess(image, height=height, width=width).to(torch.float32)


def prepare_image(config: TaskConfig, path: str | Path, size: str | None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Read, check, size and prepare the conditioning image: (pixels [1, 3, H, W] in [-1, 1], (width, height))."""
    image = load_image(path)
    width, height = video_size(config, size, image)
    return image_tensor(frame_image(config, image, width, height), width, height), (width, height)
