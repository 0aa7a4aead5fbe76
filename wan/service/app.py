"""The ASGI app: the API under /v1, OpenAPI docs at /docs, the page at /, one job service behind both."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from wan.service.jobs import JobService
from wan.service.routes import ApiError, error_response, router


def create_app(service: JobService, api_key: str | None = None, *, page: bool = True) -> FastAPI:
    """The service's app; ``page`` mounts the Gradio page at ``/`` (after the API, so /v1 and /docs stay ours)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.worker.stop(timeout=0)  # a running job stays in progress and resumes on the next start

    app = FastAPI(
        title="Wan2.2 video service",
        description="OpenAI-style video jobs on one persistent queue; the page at / uses the same queue.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.api_key = api_key

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("query", "path", "body"))
        return error_response(422, f"{where}: {first.get('msg', 'invalid')}".lstrip(": "))

    app.include_router(router)
    if page:
        from wan.service.page import mount_page

        mount_page(app, service, api_key)
    return app
