"""Image uploads through a real server on the tiny i2v checkpoint: an upload starts the video the CLI makes
from the same file; a bad image is refused with the CLI's line and leaves no file."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from service_helpers import PROMPT, LiveServer, wait_for

import generate
from wan.service.images import IMAGES_DIR
from wan.video import read_video

MAX_IMAGE_BYTES = 64 * 1024
SEED = 7


@pytest.fixture(scope="module")
def live(tmp_path_factory, i2v_task, i2v_ckpts):
    save_dir = tmp_path_factory.mktemp("service")
    argv = ["--task", str(i2v_task), "--ckpt_dir", str(i2v_ckpts["diffusers"]), "--save_dir", str(save_dir)]
    server = LiveServer([*argv, "--device", "cpu", "--max_image_bytes", str(MAX_IMAGE_BYTES)])
    yield server
    server.close()


@pytest.fixture
def client(live):
    return live.client


def upload(client, path: Path, name: str | None = None):
    return client.post("/v1/images", files={"image": (name or path.name, path.read_bytes(), "image/png")})


def stored(live) -> list[str]:
    return sorted(p.name for p in (live.service.store.path.parent / IMAGES_DIR).iterdir())


def cli(i2v_task: Path, ckpt: Path, image: str, out: Path) -> list[str]:
    return [
        "--task", str(i2v_task), "--ckpt_dir", str(ckpt), "--device", "cpu", "--quiet", "--prompt", PROMPT,
        "--base_seed", str(SEED), "--image", image, "--save_file", str(out),
    ]  # fmt: skip


def test_an_uploaded_image_makes_the_video_the_cli_makes_from_the_file(
    client, live, images, i2v_task, i2v_ckpts, tmp_path
):
    answer = upload(client, images["portrait"])
    assert answer.status_code == 201, answer.text
    image = answer.json()
    assert image["object"] == "image" and (image["width"], image["height"]) == (40, 60)
    assert upload(client, images["portrait"], "again.png").json()["id"] == image["id"]  # stored once, by content
    assert stored(live) == [f"{image['id']}.png"]

    job = client.post("/v1/videos", json={"prompt": PROMPT, "image": image["id"], "seed": SEED})
    assert job.status_code == 202, job.text
    done = wait_for(client, [job.json()["id"]])[job.json()["id"]]
    assert done["status"] == "completed", done["error"]
    assert done["request"]["image"] == image["id"]
    served = tmp_path / "served.mp4"
    served.write_bytes(client.get(f"/v1/videos/{done['id']}/content").content)

    assert generate.main(cli(i2v_task, i2v_ckpts["diffusers"], str(images["portrait"]), tmp_path / "cli.mp4")) == 0
    ours = read_video(served)
    assert ours.shape == (5, 48, 32, 3)  # the 2:3 image sets the shape, as on the command line
    assert np.array_equal(ours, read_video(tmp_path / "cli.mp4"))


@pytest.mark.parametrize("name", ["transparent", "16-bit", "notes"])
def test_a_bad_image_is_refused_with_the_clis_line_and_stores_nothing(
    client, live, images, i2v_task, i2v_ckpts, tmp_path, monkeypatch, capsys, name
):
    path = tmp_path / f"{name}.png"
    if name == "notes":
        path.write_text("not an image")
    else:
        shutil.copy(images[name], path)
    before = stored(live)
    answer = upload(client, path)
    assert answer.status_code == 400
    message = answer.json()["error"]["message"]
    monkeypatch.chdir(tmp_path)  # the CLI names the file as given: by its bare name, as the upload is named
    capsys.readouterr()
    assert generate.main(cli(i2v_task, i2v_ckpts["diffusers"], path.name, tmp_path / "v.mp4")) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert stored(live) == before and not (tmp_path / "v.mp4").exists()


def test_uploads_over_the_limit_malformed_or_without_the_key_are_refused_and_store_nothing(client, live, images):
    before = stored(live)
    for side, message in ((150, f"this server takes at most {MAX_IMAGE_BYTES}"), (300, "body has")):
        noise = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
        big = io.BytesIO()
        Image.fromarray(noise).save(big, "PNG")  # incompressible: 67 kB (the image's limit), 270 kB (the body's)
        answer = client.post("/v1/images", files={"image": ("big.png", big.getvalue(), "image/png")})
        assert answer.status_code == 413 and message in answer.json()["error"]["message"], answer.text
        assert f"at most {MAX_IMAGE_BYTES}" in answer.json()["error"]["message"]

    refusals = [
        (client.post("/v1/images", json={"image": "x"}), 415, "multipart/form-data"),
        (client.post("/v1/images", files={"picture": ("a.png", b"x")}), 400, "unknown field 'picture'"),
        (client.post("/v1/images", files={"image": (None, b"/etc/passwd")}), 400, "no file in the field 'image'"),
        (client.post("/v1/videos", json={"prompt": PROMPT}), 400, "makes a video from an image; upload it"),
        (client.post("/v1/videos", json={"prompt": PROMPT, "image": "../../etc/passwd"}), 400, "no uploaded image"),
    ]
    live.app.state.api_key = "k1"
    try:  # the key is checked before the body is read
        refusals.append((upload(client, images["portrait"]), 401, "API key"))
    finally:
        live.app.state.api_key = None
    for answer, status, message in refusals:
        assert answer.status_code == status and message in answer.json()["error"]["message"], answer.text
        assert "\n" not in answer.json()["error"]["message"]
    assert stored(live) == before


def test_openapi_documents_the_upload(client):
    spec = client.get("/openapi.json").json()
    form = spec["paths"]["/v1/images"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["image"] and form["properties"]["image"]["format"] == "binary"
    body = spec["paths"]["/v1/videos"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "POST /v1/images" in body["properties"]["image"]["description"]
