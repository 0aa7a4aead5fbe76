"""The HTTP API on t2v-tiny through a real server: every endpoint, every status, bad input, auth, limits."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file, save_file
from service_helpers import PROMPT, LiveServer, videos_in, wait_for

import generate
import serve
from wan.config import REPO_ROOT
from wan.errors import ConfigError
from wan.service.jobs import hold_folder
from wan.video import read_video

MAX_QUEUE = 3
SHIPPED_LORA = REPO_ROOT / "models" / "loras" / "tiny_blue_background.safetensors"


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory) -> Path:
    """The shipped LoRA, and one whose layers t2v-tiny lacks (accepted on reading, refused when fused)."""
    folder = tmp_path_factory.mktemp("loras")
    shutil.copy(SHIPPED_LORA, folder / SHIPPED_LORA.name)
    tensors = {k.replace("blocks.0.", "blocks.99."): v for k, v in load_file(SHIPPED_LORA).items()}
    save_file(tensors, folder / "foreign.safetensors")
    return folder


@pytest.fixture(scope="module")
def live(tmp_path_factory, lora_dir):
    save_dir = tmp_path_factory.mktemp("service")
    argv = ["--save_dir", str(save_dir), "--lora_folder", str(lora_dir), "--frame_num", "5", "--sample_steps", "2"]
    server = LiveServer([*argv, "--max_queue", str(MAX_QUEUE), "--max_prompt_chars", "100"])
    yield server
    server.close()


@pytest.fixture
def client(live):
    return live.client


def submit(client, **body) -> dict:
    answer = client.post("/v1/videos", json={"prompt": PROMPT, **body})
    assert answer.status_code == 202, answer.text
    return answer.json()


def error_of(answer) -> str:
    body = answer.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message"}, body
    message = body["error"]["message"]
    assert message and "\n" not in message
    return message


def test_a_job_runs_to_completion_and_its_video_is_served(client, live):
    created = submit(client, base_seed=7, frame_num=5)
    assert created["status"] == "queued" and created["progress"] == 0
    assert created["settings"]["seed"] == 7 and created["settings"]["frame_num"] == 5
    done = wait_for(client, [created["id"]])[created["id"]]
    assert done["status"] == "completed" and done["progress"] == 100 and done["error"] is None
    assert done["settings"]["seed"] == 7 and done["attempts"] == 1
    assert set(done["seconds"]) >= {"text_encoding", "vae_decode"}
    assert done["result"]["steps"]["high_noise"] + done["result"]["steps"]["low_noise"] == 2

    content = client.get(f"/v1/videos/{created['id']}/content")
    assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
    saved = live.service.worker.videos_dir / "download.mp4"
    saved.write_bytes(content.content)
    assert read_video(saved).shape == (5, 128, 128, 3)
    saved.unlink()


def test_progress_moves_during_sampling(client):
    job = submit(client, sample_steps=8)
    seen = []
    while (answer := client.get(f"/v1/videos/{job['id']}").json())["status"] != "completed":
        assert answer["status"] in ("queued", "in_progress"), answer
        seen.append(answer["progress"])
    assert seen == sorted(seen), "progress went backwards"
    assert any(0 < p < 100 for p in seen), seen  # the last step's value holds through the decode: always seen


def test_a_random_seed_is_drawn_once_and_kept(client):
    job = submit(client)
    assert 0 <= job["settings"]["seed"] and "base_seed" not in job["request"]
    done = wait_for(client, [job["id"]])[job["id"]]
    assert done["settings"]["seed"] == job["settings"]["seed"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"prompt": PROMPT, "frame_num": 6}, "--frame_num 6: must be 4n+1"),
        ({"prompt": PROMPT, "size": "64*64"}, "--size '64*64'"),
        ({"prompt": PROMPT, "sample_steps": 0}, "--sample_steps 0"),
        ({"prompt": PROMPT, "base_seed": 2**40}, "--base_seed"),
        ({"prompt": PROMPT, "frame_num": "5"}, "'frame_num' must be an integer"),
        ({"prompt": PROMPT, "colour": "red"}, "unknown key 'colour'"),
        ({"prompt": PROMPT, "save_file": "../x.mp4"}, "the server names every file"),
        ({"prompt": PROMPT, "lora": "../../etc/passwd"}, "no LoRA named '../../etc/passwd'"),
        ({"prompt": PROMPT, "lora": "missing"}, "choose one of: foreign, tiny_blue_background"),
        ({"prompt": PROMPT, "preset": "fastest"}, "unknown preset"),
        ({"prompt": PROMPT, "seed": 1, "base_seed": 2}, "both set the seed"),
        ({"prompt": "x" * 101}, "at most 100"),
        ({"prompt": "   "}, "the prompt is empty"),
        ({"negative_prompt": "blurry"}, "'prompt' is missing"),
        (["a list"], "must be a JSON object"),
    ],
)
def test_bad_input_is_refused_with_one_line_before_queueing(client, body, expected):
    before = client.get("/v1/videos", params={"limit": 100}).json()["data"]
    answer = client.post("/v1/videos", json=body)
    assert answer.status_code == 400
    assert expected in error_of(answer)
    assert client.get("/v1/videos", params={"limit": 100}).json()["data"] == before


@pytest.mark.parametrize("flags", [["--frame_num", "6"], ["--size", "64*64"], ["--sample_steps", "0"]])
def test_refusals_say_what_the_cli_says(client, capsys, flags):
    assert generate.main(["--prompt", PROMPT, *flags]) == 2
    cli_line = capsys.readouterr().err.strip()
    body = {"prompt": PROMPT, flags[0].removeprefix("--"): int(flags[1]) if flags[1].isdigit() else flags[1]}
    assert f"error: {error_of(client.post('/v1/videos', json=body))}" == cli_line


def test_a_body_that_is_not_json_or_too_large_is_refused(client):
    answer = client.post("/v1/videos", content=b"{prompt", headers={"content-type": "application/json"})
    assert answer.status_code == 400 and "not valid JSON" in error_of(answer)
    huge = json.dumps({"prompt": PROMPT, "negative_prompt": "x" * 70_000})
    answer = client.post("/v1/videos", content=huge, headers={"content-type": "application/json"})
    assert answer.status_code == 413 and "at most" in error_of(answer)


def test_a_text_to_video_server_takes_no_image(client, live):
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    answer = client.post("/v1/images", files={"image": ("a.png", png.getvalue(), "image/png")})
    assert answer.status_code == 400
    assert error_of(answer) == "task t2v-tiny takes no image: this server makes videos from text alone"
    assert not list((live.service.store.path.parent / "images").iterdir())


def test_unknown_ids_are_404(client):
    for method, path in [("GET", "/v1/videos/nope"), ("GET", "/v1/videos/nope/content"), ("DELETE", "/v1/videos/nope")]:
        answer = client.request(method, path)
        assert answer.status_code == 404 and "nope" in error_of(answer)
    assert client.get("/v1/nothing").status_code == 404
    answer = client.get("/v1/videos", params={"after": "nope"})
    assert answer.status_code == 404
    answer = client.get("/v1/videos", params={"limit": 0})
    assert answer.status_code == 422 and "limit" in error_of(answer)


def test_queue_limit_cancel_and_content_before_completion(client):
    running = submit(client, sample_steps=40)
    wait_for(client, [running["id"]], statuses=("in_progress",))
    queued = [submit(client) for _ in range(MAX_QUEUE)]
    full = client.post("/v1/videos", json={"prompt": PROMPT})
    assert full.status_code == 429 and "limit" in error_of(full) and full.headers["retry-after"]

    for job in (running, queued[0]):
        answer = client.get(f"/v1/videos/{job['id']}/content")
        assert answer.status_code == 409 and "not completed" in error_of(answer)

    cancelled = client.delete(f"/v1/videos/{queued[0]['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    stopping = client.delete(f"/v1/videos/{running['id']}")
    assert stopping.status_code == 202 and stopping.json()["status"] == "in_progress"
    assert wait_for(client, [running["id"]])[running["id"]]["status"] == "cancelled"
    assert client.get(f"/v1/videos/{queued[0]['id']}/content").status_code == 409

    rest = wait_for(client, [job["id"] for job in queued[1:]])
    assert {answer["status"] for answer in rest.values()} == {"completed"}
    gone = client.delete(f"/v1/videos/{queued[0]['id']}")  # a cancelled job is finished: now deleted
    assert gone.status_code == 200 and gone.json() == {
        "id": queued[0]["id"],
        "object": "video.deleted",
        "deleted": True,
    }
    assert client.get(f"/v1/videos/{queued[0]['id']}").status_code == 404


def test_a_job_that_fails_says_why_and_the_queue_goes_on(client):
    failing = submit(client, lora="foreign")
    after = submit(client, lora="tiny_blue_background:0.5")
    answers = wait_for(client, [failing["id"], after["id"]])
    failed = answers[failing["id"]]
    assert failed["status"] == "failed" and "matches no layer" in failed["error"]["message"]
    assert "\n" not in failed["error"]["message"]
    assert answers[after["id"]]["status"] == "completed"
    assert answers[after["id"]]["result"]["loras"]["high_noise"][0]["scale"] == 0.5
    assert client.get(f"/v1/videos/{failing['id']}/content").status_code == 409


def test_delete_removes_a_finished_video_and_its_files(client, live):
    job = submit(client)
    wait_for(client, [job["id"]])
    video = live.service.worker.video_path(job["id"])
    assert video.is_file() and Path(f"{video}.json").is_file()
    answer = client.delete(f"/v1/videos/{job['id']}")
    assert answer.status_code == 200 and answer.json()["deleted"] is True
    assert not video.exists() and not Path(f"{video}.json").exists()
    assert client.get(f"/v1/videos/{job['id']}").status_code == 404
    assert client.get(f"/v1/videos/{job['id']}/content").status_code == 404


def test_list_is_newest_first_and_pages_without_overlap(client):
    ids = [submit(client)["id"] for _ in range(3)]
    wait_for(client, ids)
    everything = client.get("/v1/videos", params={"limit": 100}).json()
    assert everything["object"] == "list" and not everything["has_more"]
    listed = [job["id"] for job in everything["data"]]
    assert listed[:3] == ids[::-1]
    paged, after = [], None
    while True:
        page = client.get("/v1/videos", params={"limit": 2, **({"after": after} if after else {})}).json()
        paged += [job["id"] for job in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert paged == listed


def test_api_key_is_required_when_set(client, live):
    live.app.state.api_key = "s3cret"
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            answer = client.get("/v1/videos", headers=headers)
            assert answer.status_code == 401 and "API key" in error_of(answer)
            assert answer.headers["www-authenticate"] == "Bearer"
        assert client.post("/v1/videos", json={"prompt": PROMPT}).status_code == 401
        assert client.get("/v1/videos", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    finally:
        live.app.state.api_key = None
    assert client.get("/v1/videos").status_code == 200


def test_openapi_documents_the_body(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/videos"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["prompt"] and "save_file" not in body["properties"]
    assert {"frame_num", "sample_steps", "lora", "preset", "enable_half_frame_generation"} <= set(body["properties"])
    assert client.get("/docs").status_code == 200


def test_every_completed_job_has_one_video(live):
    done = {job.id for job in live.service.store.page(1000)[0] if job.status == "completed"}
    assert {path.stem for path in videos_in(live.service.store.path.parent)} == done
    completions = [job for job, event in live.service.store.events() if event == "completed"]
    assert sorted(completions) == sorted(set(completions))


def test_a_public_host_needs_a_key_and_a_folder_one_server(tmp_path, capsys):
    assert serve.main(["--host", "0.0.0.0", "--save_dir", str(tmp_path)]) == 2
    assert "--api_key" in capsys.readouterr().err
    assert serve.main(["--prompt", PROMPT, "--save_dir", str(tmp_path)]) == 2
    assert "POST /v1/videos" in capsys.readouterr().err
    hold_folder(tmp_path)
    with pytest.raises(ConfigError, match="in use by another serve.py"):
        hold_folder(tmp_path)


def test_with_a_key_the_page_wants_a_login_too(tmp_path):
    live = LiveServer(["--save_dir", str(tmp_path), "--api_key", "k1"], page=True)
    try:
        client = live.client
        assert client.get("/config").status_code == 401  # the page's own API, before logging in
        assert client.post("/login", data={"username": "anyone", "password": "wrong"}).status_code != 200
        assert client.post("/login", data={"username": "anyone", "password": "k1"}).status_code == 200
        assert client.get("/config").status_code == 200
        assert client.get("/v1/videos").status_code == 401  # the API still wants its bearer key
    finally:
        live.close()


def test_a_preset_per_request_loads_its_levers_and_generation_defaults(client):
    fast = submit(client, preset="fast", sample_steps=6)
    assert (fast["settings"]["cfg_truncate_steps"], fast["settings"]["cfg_truncate_high_noise_steps"]) == (5, 3)
    plain = submit(client, sample_steps=6)
    assert plain["settings"]["cfg_truncate_steps"] == 0
    answers = wait_for(client, [fast["id"], plain["id"]])
    assert answers[fast["id"]]["result"]["options"]["preset"] == "fast"
    assert answers[fast["id"]]["result"]["options"]["levers"]["cache"]
    assert answers[plain["id"]]["result"]["options"]["preset"] is None
    forwards = [sum(answers[job["id"]]["result"]["forwards"].values()) for job in (fast, plain)]
    assert forwards[0] < forwards[1] == 12  # CFG truncation: fewer forwards than 2 per step
