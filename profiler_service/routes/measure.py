from __future__ import annotations

import json

from fastapi import APIRouter, Depends, File, Form, UploadFile

from profiler_service.errors import InvalidInput, UploadTooLarge
from profiler_service.schemas import MeasureResult
from profiler_service.state import ServiceState, require_write, service

router = APIRouter(tags=["measure"])
SHAPE_HELP = 'dims joined by x for a one-input model ("1x3x224x224"), or JSON {"input": [1, 3, 224, 224]}'


def parse_input_shapes(text: str | None, first_input: str = "") -> dict[str, list[int]] | None:
    if not text:
        return None
    try:
        if text.lstrip().startswith("{"):
            raw = json.loads(text)
            shapes = {str(k): [int(d) for d in v] for k, v in raw.items()}
        else:
            shapes = {first_input: [int(d) for d in text.lower().split("x")]}
    except (ValueError, TypeError, AttributeError):
        raise InvalidInput(f"bad input_shape {text!r}: {SHAPE_HELP}") from None
    if any(d < 1 or d > 1 << 20 for dims in shapes.values() for d in dims):
        raise InvalidInput(f"bad input_shape {text!r}: dimensions must be positive")
    return shapes


def _read_limited(upload: UploadFile, limit: int) -> bytes:
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise UploadTooLarge(f"model over {limit} bytes (HALP_MAX_UPLOAD_BYTES)")
    return data


@router.post("/measure", response_model=MeasureResult, dependencies=[Depends(require_write)])
def measure_model(
    model: UploadFile = File(..., description="ONNX model"),
    input_shape: str | None = Form(None, description=SHAPE_HELP),
    svc: ServiceState = Depends(service),
) -> MeasureResult:
    """End-to-end latency of a whole ONNX model on this device, to validate predictions."""
    data = _read_limited(model, svc.settings.max_upload_bytes)
    shapes = parse_input_shapes(input_shape, _first_input_name(data))
    stats = svc.measurer.model(data, shapes)
    return MeasureResult(
        fingerprint=svc.device.fingerprint,
        backend=svc.device.backend,
        median_ms=stats.median_ms,
        p10_ms=stats.p10_ms,
        p90_ms=stats.p90_ms,
        runs=stats.runs,
        input_shapes=shapes,
    )


def _first_input_name(data: bytes) -> str:
    import onnx

    from profiler_service.backends import UnsupportedModel

    try:
        graph = onnx.load_model_from_string(data).graph
    except Exception as e:  # protobuf raises DecodeError and friends
        raise UnsupportedModel(f"not an ONNX model: {e}") from None
    initializers = {t.name for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    if not inputs:
        raise UnsupportedModel("the ONNX model has no inputs")
    return inputs[0]
