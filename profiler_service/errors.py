"""Domain errors and their one mapping to RFC 9457 problem responses."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from profiler_service.backends import BackendUnavailable, UnsupportedModel
from profiler_service.shapes import InvalidLayerShape, InvalidPoint

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"


class OverLimit(ValueError):
    """A request beyond the service's limits (points, memory)."""


class InvalidInput(ValueError):
    """A malformed parameter (channel selection, input shape) in an otherwise valid request."""


class NotFound(LookupError):
    """An unknown job or a table with nothing measured."""


class Unauthorized(PermissionError):
    """Missing or wrong bearer token."""


class UploadTooLarge(ValueError):
    """An upload over the configured size limit."""


class Conflict(ValueError):
    """A request that the resource's state forbids (cancelling a finished job)."""


class DeviceBusy(RuntimeError):
    """The device's queue is past its bound (503), or this client is one upload too many (429); the
    client should come back later."""

    def __init__(self, message: str, retry_after_s: int, status: int = 503) -> None:
        super().__init__(message)
        self.retry_after_s, self.status = retry_after_s, status


class MeasurementFailed(RuntimeError):
    """A build or timing failed inside the measurement worker, or crashed it."""


class Interrupted(RuntimeError):
    """A measurement stopped from outside: a cancelled job or a shutting-down service."""


def problem(
    status: int, title: str, detail: str | None = None, headers: dict[str, str] | None = None, **extra: object
) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    headers = {**({"WWW-Authenticate": "Bearer"} if status == 401 else {}), **(headers or {})}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


_MAPPING: list[tuple[type[Exception], int, str]] = [
    (InvalidLayerShape, 422, "Invalid layer shape"),
    (InvalidPoint, 422, "Invalid channel point"),
    (OverLimit, 422, "Request over limit"),
    (InvalidInput, 422, "Invalid request"),
    (UnsupportedModel, 422, "Model not supported by this backend"),
    (NotFound, 404, "Not found"),
    (Unauthorized, 401, "Unauthorized"),
    (UploadTooLarge, 413, "Upload too large"),
    (Conflict, 409, "Conflict"),
    (MeasurementFailed, 422, "Measurement failed"),
    (Interrupted, 503, "Measurement interrupted"),
    (BackendUnavailable, 503, "Device unavailable"),
]


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> str:
    """Every method some route takes at this path (Starlette names only the first matching route's)."""
    routes = request.app.router.routes
    allowed = [m for m in _METHODS if any(r.matches({**request.scope, "method": m})[0] == Match.FULL for r in routes)]
    return ", ".join(allowed)


def install_error_handlers(app: FastAPI) -> None:
    for exc_type, status, title in _MAPPING:

        def handler(_: Request, exc: Exception, status: int = status, title: str = title) -> JSONResponse:
            extra = {"grammar": exc.grammar} if isinstance(exc, InvalidLayerShape) else {}
            return problem(status, title, str(exc), **extra)

        app.add_exception_handler(exc_type, handler)

    @app.exception_handler(DeviceBusy)
    def _busy(_: Request, exc: DeviceBusy) -> JSONResponse:
        title = "Too many uploads" if exc.status == 429 else "Device busy"
        return problem(exc.status, title, str(exc), headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(RequestValidationError)
    def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        msgs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return problem(422, "Invalid request", msgs)

    @app.exception_handler(StarletteHTTPException)
    def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        return problem(exc.status_code, str(exc.detail), None, headers=headers)

    @app.exception_handler(Exception)
    def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return problem(500, "Internal error", type(exc).__name__)
