"""The web page at ``/``: a Gradio form over the same job service as the API (same queue, same checks).

The page submits a job, then follows it: a progress bar that moves with the sampling loop, the video
when it is done, and a gallery of earlier videos. A refused request shows the CLI's one-line error.
For an image task the form has a file input; the file goes through the API's upload (same checks, same
store) before the job is submitted with its id.
"""

from __future__ import annotations

import html
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: servers may have no internet

import gradio as gr  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from wan.errors import ConfigError  # noqa: E402
from wan.levers.presets import PRESETS  # noqa: E402
from wan.service.jobs import JobService  # noqa: E402
from wan.service.requests import LORA_SUFFIX  # noqa: E402
from wan.service.store import COMPLETED, FINISHED, QueueFull  # noqa: E402

NONE = "none"
POLL_S = 0.25
GALLERY_SIZE = 12
TITLES = {"t2v": "text-to-video", "i2v": "image-to-video", "ti2v": "text- and image-to-video"}
IMAGE_LABELS = {"i2v": "Image (the first frame; required)", "ti2v": "Image (the first frame; optional)"}


def page_request(
    prompt: str,
    negative: str,
    size: str,
    frames: float,
    steps: float,
    seed: float,
    preset: str,
    lora: str,
    half: bool,
    image_id: str | None = None,
) -> dict[str, Any]:
    """The form as an API body: the page goes through exactly the checks a client's request does."""
    body: dict[str, Any] = {"prompt": prompt, "size": size, "enable_half_frame_generation": bool(half)}
    if image_id is not None:
        body["image"] = image_id
    if negative:
        body["negative_prompt"] = negative
    for key, value in (("frame_num", frames), ("sample_steps", steps), ("base_seed", seed)):
        if value is not None and not (key == "base_seed" and value < 0):
            body[key] = int(value)
    body["preset"] = None if preset == NONE else preset
    if lora != NONE:
        body["lora"] = lora
    return body


def progress_bar(percent: int, state: str) -> str:
    """The job's progress as an HTML ``<progress>`` bar (Gradio's own bar hides once a generator yields)."""
    label = html.escape(state.replace("_", " "))
    return (
        f'<div style="display:flex;gap:0.6em;align-items:center"><progress value="{percent}" max="100" '
        f'style="flex:1;height:1.1em"></progress><span>{label} {percent}%</span></div>'
    )


def build_page(service: JobService) -> gr.Blocks:
    config = service.parser.config
    loras = [NONE, *(name.removesuffix(LORA_SUFFIX) for name in service.parser.lora_names())]

    def gallery() -> list[tuple[str, str]]:
        jobs, _ = service.store.page(GALLERY_SIZE * 4)
        done = [(str(service.video_path(j)), j.settings["prompt"][:60]) for j in jobs if j.status == COMPLETED]
        return done[:GALLERY_SIZE]

    def generate(
        prompt: str,
        negative: str,
        size: str,
        frames: float,
        steps: float,
        seed: float,
        preset: str,
        lora: str,
        half: bool,
        image: str | None = None,
    ) -> Iterator[tuple[Any, Any, Any, Any]]:
        try:
            image_id = None if image is None else service.upload_image(Path(image).read_bytes(), Path(image).name).id
            body = page_request(prompt, negative, size, frames, steps, seed, preset, lora, half, image_id)
            job = service.submit(body)
        except (ConfigError, QueueFull) as exc:
            yield f"error: {exc}", None, gr.skip(), progress_bar(0, "refused")
            return
        yield f"{job.id}: queued", None, gr.skip(), progress_bar(0, "queued")
        while True:
            time.sleep(POLL_S)
            job = service.get(job.id)
            if job is None:  # deleted through the API meanwhile
                yield "error: the job was deleted", None, gallery(), progress_bar(0, "deleted")
                return
            if job.status in FINISHED:  # the final line below, never a "completed 100%" before it
                break
            percent = service.progress(job)
            yield f"{job.id}: {job.status} {percent}%", gr.skip(), gr.skip(), progress_bar(percent, job.status)
        if job.status == COMPLETED:
            seconds = sum((job.result or {}).get("seconds", {}).values())
            yield (
                f"{job.id}: completed in {seconds:.1f} s (seed {job.settings['seed']})",
                str(service.video_path(job)),
                gallery(),
                progress_bar(100, job.status),
            )
        else:
            yield f"error: {job.error or job.status}", None, gallery(), progress_bar(0, job.status)

    with gr.Blocks(title="Wan2.2 video") as page:
        gr.Markdown(
            f"## Wan2.2 {TITLES[config.kind]} ({config.task})  \n"
            "The same queue as the API: `/v1/videos`, docs at `/docs`."
        )
        with gr.Row():
            with gr.Column():
                images = []
                if config.kind in IMAGE_LABELS:  # the file as sent: gr.Image would re-encode it (alpha dropped)
                    images.append(
                        gr.File(label=IMAGE_LABELS[config.kind], file_types=["image"], type="filepath", elem_id="image")
                    )
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt")
                negative = gr.Textbox(label="Negative prompt", placeholder="the task's default", elem_id="negative")
                with gr.Row():
                    size = gr.Dropdown(list(config.sizes), value=config.default_size, label="Size", elem_id="size")
                    frames = gr.Number(
                        value=config.frame_num, precision=0, label="Frames (4n+1)", minimum=1, elem_id="frames"
                    )
                    steps = gr.Number(value=config.sample_steps, precision=0, label="Steps", minimum=1, elem_id="steps")
                    seed = gr.Number(value=-1, precision=0, label="Seed (-1: random)", elem_id="seed")
                with gr.Row():
                    preset = gr.Dropdown([NONE, *PRESETS], value=service.parser.preset or NONE, label="Preset")
                    lora = gr.Dropdown(loras, value=NONE, label="LoRA")
                    half = gr.Checkbox(label="Half-frame generation", elem_id="half")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
                bar = gr.HTML(progress_bar(0, "idle"), elem_id="progress")
                status = gr.Textbox(label="Status", interactive=False, elem_id="status")
            with gr.Column():
                video = gr.Video(label="Video", autoplay=True, loop=True, interactive=False, elem_id="video")
                earlier = gr.Gallery(
                    label="Earlier videos", columns=4, height=280, object_fit="contain", elem_id="gallery"
                )
        button.click(
            generate,
            [prompt, negative, size, frames, steps, seed, preset, lora, half, *images],
            [status, video, earlier, bar],
            concurrency_limit=None,  # the job queue orders the work; the page only follows it
        )
        page.load(gallery, None, earlier)
    return page


def mount_page(app: FastAPI, service: JobService, api_key: str | None) -> None:
    """The page at ``/``; with an API key, its login takes any user name and the key as password."""

    def login(user: str, password: str) -> bool:
        return secrets.compare_digest(password.encode(), api_key.encode())

    gr.mount_gradio_app(
        app,
        build_page(service),
        path="/",
        auth=login if api_key else None,
        allowed_paths=[str(service.worker.videos_dir)],
        max_file_size=service.limits.max_image_bytes,
        ssr_mode=False,
    )
