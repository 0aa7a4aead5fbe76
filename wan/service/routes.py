"""The HTTP API, OpenAI-style: ``/v1/videos`` to create, poll, fetch, list and delete video jobs.

Every error answers ``{"error": {"message": "<one line>"}}``; for a refused request that line is
what ``generate.py`` prints after ``error:`` for the same flags.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from wan.batch.prompt_file import ITEM_FLAGS
from wan.errors import ConfigError
from wan.levers.presets import PRESETS
from wan.service.images import UploadTooLarge
from wan.service.jobs import JobService
from wan.service.requests import REQUEST_KEYS
from wan.service.store import QueueFull

MAX_PAGE = 100
MAX_FORM_FIELDS = 8
"""Parts an upload may have besides its file: a few, so a stray field gets a clear 400, not a parser error."""
MULTIPART_FRAMING_BYTES = 64 * 1024
"""What an upload's body may hold besides the image (boundaries, part headers): the image's own limit is exact."""
UPLOAD_SCHEMA = {
    "type": "object",
    "required": ["image"],
    "properties": {"image": {"type": "string", "format": "binary", "description": "a PNG, JPEG or WebP file"}},
}
_JSON_TYPES = {str: {"type": "string"}, int: {"type": "integer"}, float: {"type": "number"}, bool: {"type": "boolean"}}


class ApiError(Exception):
    """An answer other than success: status code, one-line message, extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message}}, status_code=status, headers=headers)


def service_of(request: Request) -> JobService:
    return request.app.state.service


def check_key(request: Request) -> None:
    """``Authorization: Bearer KEY`` when the server has an API key."""
    key = request.app.state.api_key
    if key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), key.encode()):
        raise ApiError(
            401, "missing or wrong API key; send 'Authorization: Bearer KEY'", {"WWW-Authenticate": "Bearer"}
        )


def request_schema() -> dict[str, Any]:
    """The body's JSON schema for /docs, from the batch item keys the parser takes."""
    properties: dict[str, Any] = {"preset": {"type": ["string", "null"], "enum": [*PRESETS, None]}}
    for key in REQUEST_KEYS:
        types = ITEM_FLAGS.get("base_seed" if key == "seed" else key)
        if types is None:
            continue
        if list in types:
            properties[key] = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
        else:
            properties[key] = _JSON_TYPES[types[-1]]
    properties["image"]["description"] = "an image task's first frame: the id its upload (POST /v1/images) answered"
    return {
        "type": "object",
        "required": ["prompt"],
        "properties": properties,
        "additionalProperties": False,
        "example": {"prompt": "a red square moving left", "frame_num": 17, "sample_steps": 20, "seed": 1},
    }


router = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])


async def limited_stream(request: Request, limit: int, takes: str = "") -> AsyncIterator[bytes]:
    """The body's chunks, refused (413) as soon as they pass ``limit`` bytes, however the body is sent;
    ``takes`` says what the server takes (default: ``at most <limit>``)."""
    takes = takes or f"at most {limit}"
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body has {declared} bytes; this server takes {takes}")
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the body has more than {limit} bytes; this server takes {takes}")
        yield chunk


async def read_body(request: Request, limit: int) -> bytes:
    """The body, at most ``limit`` bytes (413 beyond)."""
    return b"".join([chunk async for chunk in limited_stream(request, limit)])


async def read_upload(request: Request, field: str, limit: int) -> tuple[bytes, str | None]:
    """The one file of a multipart/form-data body, in field ``field``: (its bytes, its file name); the body
    may hold ``limit`` bytes of file plus its multipart framing (413 beyond).

    Parsed here, with starlette's parser, rather than by a FastAPI ``UploadFile`` parameter: FastAPI reads
    a form before the route's dependencies run, so an unauthenticated body of any size would be stored
    first; here the key is checked first and reading stops at ``limit`` bytes.
    """
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(415, f"send the image as multipart/form-data, the file in the field {field!r}")
    stream = limited_stream(request, limit + MULTIPART_FRAMING_BYTES, f"files of at most {limit} bytes")
    parser = MultiPartParser(request.headers, stream, max_files=1, max_fields=MAX_FORM_FIELDS)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, f"the multipart body cannot be read ({exc.message})") from exc
    try:
        unknown = [key for key in form if key != field]
        if unknown:
            raise ApiError(400, f"unknown field {unknown[0]!r}; the upload takes one file, in the field {field!r}")
        upload = form.get(field)
        if not isinstance(upload, UploadFile):
            raise ApiError(400, f"no file in the field {field!r}; send the image as a file there")
        return await upload.read(), upload.filename
    finally:
        await form.close()


@router.post(
    "/images",
    status_code=201,
    summary="Upload an image for image-to-video requests",
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": UPLOAD_SCHEMA}}}},
)
async def upload_image(request: Request) -> JSONResponse:
    service = service_of(request)
    data, filename = await read_upload(request, "image", service.limits.max_image_bytes)
    try:
        image = await run_in_threadpool(service.upload_image, data, filename)
    except UploadTooLarge as exc:
        raise ApiError(413, str(exc)) from exc
    except ConfigError as exc:
        raise ApiError(400, str(exc)) from exc
    return JSONResponse(image.describe(), status_code=201)


@router.post(
    "/videos",
    status_code=202,
    summary="Queue a video",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": request_schema()}}}},
)
async def create_video(request: Request) -> JSONResponse:
    service = service_of(request)
    body = await read_body(request, service.limits.max_body_bytes)
    try:
        spec = await run_in_threadpool(service.parser.parse_body, body)
        job = await run_in_threadpool(service.submit, spec)
    except ConfigError as exc:
        raise ApiError(400, str(exc)) from exc
    except QueueFull as exc:
        raise ApiError(429, str(exc), {"Retry-After": "10"}) from exc
    return JSONResponse(service.describe(job), status_code=202)


@router.get("/videos", summary="List videos, newest first")
def list_videos(
    request: Request,
    limit: int = Query(20, ge=1, le=MAX_PAGE),
    after: str | None = Query(None, description="the last id of the previous page"),
) -> dict[str, Any]:
    service = service_of(request)
    try:
        jobs, more = service.store.page(limit, after)
    except KeyError as exc:
        raise ApiError(404, f"no video {after!r} to list after") from exc
    data = [service.describe(job) for job in jobs]
    return {
        "object": "list",
        "data": data,
        "has_more": more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def _job(service: JobService, video_id: str):
    job = service.get(video_id)
    if job is None:
        raise ApiError(404, f"no video {video_id!r}")
    return job


@router.get("/videos/{video_id}", summary="A video's status, progress, settings and seconds")
def get_video(request: Request, video_id: str) -> dict[str, Any]:
    service = service_of(request)
    return service.describe(_job(service, video_id))


@router.get(
    "/videos/{video_id}/content",
    summary="The finished mp4",
    response_class=FileResponse,
    responses={200: {"content": {"video/mp4": {}}}},
)
def get_content(request: Request, video_id: str) -> FileResponse:
    service = service_of(request)
    job = _job(service, video_id)
    path = service.video_path(job)
    if path is None:
        raise ApiError(409, f"video {video_id} is {job.status}, not completed; its content exists once completed")
    return FileResponse(path, media_type="video/mp4", filename=f"{video_id}.mp4")


@router.delete("/videos/{video_id}", summary="Cancel a queued or running video, or delete a finished one")
def delete_video(request: Request, video_id: str) -> JSONResponse:
    service = service_of(request)
    outcome = service.cancel_or_delete(video_id)
    if outcome is None:
        raise ApiError(404, f"no video {video_id!r}")
    if outcome == "deleted":
        return JSONResponse({"id": video_id, "object": "video.deleted", "deleted": True})
    job = _job(service, video_id)
    return JSONResponse(service.describe(job), status_code=202 if job.status == "in_progress" else 200)
