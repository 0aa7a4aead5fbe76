"""Uploaded images: checked as the CLI checks ``--image``, stored once under their content's hash, named by id.

An image-to-video request names its image by the id its upload answered (``image_<hash>``), never by a
path, as it names a LoRA by file name: a client never reaches the file system with a path of its own.
The upload is separate from the request so the request stays the JSON of a prompt-file line, and one
image can start several videos (other seeds, prompts, sizes). An upload is decoded and refused with the
CLI's one-line message before anything is written; a stored file is complete (written beside its name,
then renamed) and never changes, since its name is its content's hash.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from wan.errors import ConfigError
from wan.image import decode_image
from wan.video import atomic_path

logger = logging.getLogger(__name__)

IMAGES_DIR = "images"
IMAGE_ID = re.compile(r"image_[0-9a-f]{32}")
MAX_NAME_CHARS = 100
"""An upload's file name is only quoted in messages; a longer one is cut."""


class UploadTooLarge(ConfigError):
    """An upload over the server's byte limit (HTTP 413)."""


@dataclass(frozen=True)
class StoredImage:
    """An accepted upload: its id, its file on the server and its size in pixels as the video will see it."""

    id: str
    path: Path
    width: int
    height: int
    bytes: int

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "object": "image", "width": self.width, "height": self.height, "bytes": self.bytes}


def display_name(filename: str | None) -> str:
    """The upload's file name as messages quote it: no folders, one printable line."""
    name = Path(filename or "").name or "upload"
    return "".join(c if c.isprintable() else "?" for c in name)[:MAX_NAME_CHARS]


class ImageStore:
    """The service's uploaded images, one file each in ``<save_dir>/images``."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder = folder
        self.max_bytes = max_bytes
        folder.mkdir(exist_ok=True)
        for temp in folder.glob(".*.tmp*"):  # left by a killed upload; this process is the folder's only writer
            temp.unlink(missing_ok=True)

    def add(self, data: bytes, filename: str | None) -> StoredImage:
        """Check ``data`` as ``--image`` is checked and store it; ``ConfigError`` (``UploadTooLarge``) refuses it."""
        name = display_name(filename)
        if len(data) > self.max_bytes:
            raise UploadTooLarge(f"image {name} has {len(data)} bytes; this server takes at most {self.max_bytes}")
        image = decode_image(io.BytesIO(data), name)
        image_id = f"image_{hashlib.sha256(data).hexdigest()[:32]}"
        suffix = (Image.open(io.BytesIO(data)).format or "img").lower()
        path = self.folder / f"{image_id}.{suffix}"
        if not path.exists():
            with atomic_path(path) as temp:
                temp.write_bytes(data)
            logger.info("stored %s (%s, %d*%d)", path.name, name, image.width, image.height)
        return StoredImage(image_id, path, image.width, image.height, len(data))

    def path(self, image_id: str) -> Path:
        """The file of an uploaded image; ``ConfigError`` for an id this server has not stored."""
        found = sorted(self.folder.glob(f"{image_id}.*")) if IMAGE_ID.fullmatch(image_id) else []
        if not found:
            raise ConfigError(
                f"'image': no uploaded image {image_id!r} on this server; upload the file (POST /v1/images) "
                "and pass the id it answers"
            )
        return found[0]
