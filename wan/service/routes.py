"""The HTTP API, OpenAI-style: ``/v1/videos`` to create, poll, fetch, list and delete video jobs.

Every error answers ``{"error": {"message": "<one line>"}}``; for a refused request that line is
what ``generate.py`` prints after ``error:`` for the same flags.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse

from wan.batch.prompt_file import ITEM_FLAGS
from wan.errors import ConfigError
from wan.levers.presets import PRESETS
from wan.service.jobs import JobService
from wan.service.requests import REQUEST_KEYS
from wan.service.store import QueueFull

MAX_PAGE = 100
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
    return {
        "type": "object",
        "required": ["prompt"],
        "properties": properties,
        "additionalProperties": False,
        "example": {"prompt": "a red square moving left", "frame_num": 17, "sample_steps": 20, "seed": 1},
    }


router = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes ``limit`` bytes, however it is sent."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body has {declared} bytes; this server takes at most {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the body has more than {limit} bytes; this server takes at most {limit}")
    return bytes(body)


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
