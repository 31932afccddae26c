"""POST /measure: whole-model latency of an uploaded ONNX model, timed in the worker.

The multipart body is parsed here by hand, after the token check: FastAPI reads
declared ``File``/``Form`` parameters before any dependency runs, which would
let an unauthenticated client make the service read 256 MiB. The body is
streamed to a temporary file under the size limit and handed to the worker by
path; the server process never parses the model.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from profiler_service.auth import require_write
from profiler_service.errors import DeviceBusy, InvalidInput
from profiler_service.schemas import FIRST_INPUT, MeasureResult
from profiler_service.state import ServiceState, service

router = APIRouter(tags=["measure"])
SHAPE_HELP = 'dims joined by x for a one-input model ("1x3x224x224"), or JSON {"input": [1, 3, 224, 224]}'
MAX_DIM = 1 << 20

_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["model"],
                "properties": {
                    "model": {"type": "string", "format": "binary", "description": "ONNX model"},
                    "input_shape": {"type": "string", "description": SHAPE_HELP},
                },
            }
        }
    },
}


def parse_input_shapes(text: str | None, max_elements: int) -> dict[str, list[int]] | None:
    """Input shapes by name (``FIRST_INPUT`` for the unnamed form), each dim and each input size capped."""
    if not text:
        return None
    try:
        if text.lstrip().startswith("{"):
            raw = json.loads(text)
            shapes = {str(k): [_dim(d) for d in v] for k, v in raw.items()}
        else:
            shapes = {FIRST_INPUT: [_dim(d) for d in text.lower().split("x")]}
    except (ValueError, TypeError, AttributeError):
        raise InvalidInput(f"bad input_shape {text[:200]!r}: {SHAPE_HELP}") from None
    for name, dims in shapes.items():
        if not dims or any(not 1 <= d <= MAX_DIM for d in dims):
            raise InvalidInput(f"bad input_shape {text[:200]!r}: dimensions must lie in 1..{MAX_DIM}")
        if math.prod(dims) > max_elements:
            raise InvalidInput(
                f"input {name or 'of the model'} {dims} has {math.prod(dims):,} elements; "
                f"at most {max_elements:,} (HALP_MAX_INPUT_ELEMENTS)"
            )
    return shapes


def _dim(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(value)
    return int(value)


async def _receive_upload(request: Request) -> tuple[Path, str | None]:
    """The model, spooled to a temporary file the caller deletes, and the input_shape field (the body's
    size is capped below the route, ``limits.BodyLimit``)."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise InvalidInput("send the model as multipart/form-data with a 'model' file part")
    parser = MultiPartParser(request.headers, request.stream(), max_files=1, max_fields=1)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise InvalidInput(f"malformed multipart body: {e.message}") from None
    upload, shape = form.get("model"), form.get("input_shape")
    if not isinstance(upload, UploadFile):
        raise InvalidInput("the multipart body needs a 'model' file part (the ONNX model)")
    if shape is not None and not isinstance(shape, str):
        raise InvalidInput("input_shape must be a form field, not a file")
    with tempfile.NamedTemporaryFile(prefix="halp-upload-", suffix=".onnx", delete=False) as f:
        await run_in_threadpool(shutil.copyfileobj, upload.file, f)
    await upload.close()
    return Path(f.name), shape


@router.post(
    "/measure",
    response_model=MeasureResult,
    dependencies=[Depends(require_write)],
    openapi_extra={"requestBody": _BODY},
)
async def measure_model(request: Request, svc: ServiceState = Depends(service)) -> MeasureResult:
    """End-to-end latency of a whole ONNX model on this device, to validate predictions."""
    if svc.uploads.locked():  # refused now, not queued: each waiting upload would hold a pool thread
        raise DeviceBusy(
            f"{svc.settings.max_concurrent_uploads} uploads are in progress (HALP_MAX_CONCURRENT_UPLOADS); "
            "try again later",
            retry_after_s=max(1, math.ceil(svc.settings.measure_wait_s / 4)),
            status=429,
        )
    async with svc.uploads:
        path, input_shape = await _receive_upload(request)
        try:
            shapes = parse_input_shapes(input_shape, svc.settings.max_input_elements)
            stats, resolved = await run_in_threadpool(svc.measurer.model, path, shapes)
        finally:
            path.unlink(missing_ok=True)
    return MeasureResult.of(svc.device, stats, resolved)
