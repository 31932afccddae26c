"""Domain errors and their one mapping to RFC 9457 problem responses."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from profiler_service.backends import UnsupportedModel
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


def problem(status: int, title: str, detail: str | None = None, **extra: object) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
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
]


def install_error_handlers(app: FastAPI) -> None:
    for exc_type, status, title in _MAPPING:

        def handler(_: Request, exc: Exception, status: int = status, title: str = title) -> JSONResponse:
            extra = {"grammar": exc.grammar} if isinstance(exc, InvalidLayerShape) else {}
            return problem(status, title, str(exc), **extra)

        app.add_exception_handler(exc_type, handler)

    @app.exception_handler(RequestValidationError)
    def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        msgs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return problem(422, "Invalid request", msgs)

    @app.exception_handler(StarletteHTTPException)
    def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), None)

    @app.exception_handler(Exception)
    def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return problem(500, "Internal error", type(exc).__name__)
