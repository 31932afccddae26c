"""Checks of an uploaded ONNX model before anything is allocated for it.

Runs in the measurement worker (it needs ``onnx``, which the server process
never imports). The declared input shapes must name the model's real inputs
with their rank and static sizes, and static shape inference must not find a
tensor larger than the worker may hold: a 127-byte model can ask for 64 GiB.
"""

from __future__ import annotations

import math

import onnx
from onnx import TensorProto

from profiler_service.schemas import FIRST_INPUT


class ModelRejected(ValueError):
    """The upload cannot be measured as declared; ``kind`` says which problem document fits."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "invalid" (the request is wrong) or "limit" (over a limit)


def _dims(value: onnx.ValueInfoProto) -> list[int | None]:
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in shape.dim]


def _bytes(value: onnx.ValueInfoProto, dims: list[int]) -> int:
    elem = value.type.tensor_type.elem_type
    try:
        size = onnx.helper.tensor_dtype_to_np_dtype(elem).itemsize
    except (KeyError, TypeError, ValueError):
        size = 8
    return math.prod(dims) * size


def resolve_inputs(
    model: onnx.ModelProto, declared: dict[str, list[int]] | None, memory_bytes: int | None
) -> dict[str, list[int]]:
    """Every real input's full shape: the model's static dims, overridden by the declared ones."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in initializers}
    if not inputs:
        raise ModelRejected("invalid", "the ONNX model has no inputs")
    declared = dict(declared or {})
    if FIRST_INPUT in declared:
        if len(inputs) != 1:
            raise ModelRejected(
                "invalid",
                f"the model has {len(inputs)} inputs ({', '.join(inputs)}): give input_shape as JSON by name",
            )
        declared[next(iter(inputs))] = declared.pop(FIRST_INPUT)
    unknown = sorted(set(declared) - set(inputs))
    if unknown:
        raise ModelRejected(
            "invalid", f"input_shape names {', '.join(map(repr, unknown))}; the model's inputs are {', '.join(inputs)}"
        )
    resolved: dict[str, list[int]] = {}
    for name, value in inputs.items():
        model_dims = _dims(value)
        given = declared.get(name)
        if given is None:
            if any(d is None for d in model_dims):
                raise ModelRejected("invalid", f"input {name!r} has dynamic shape {model_dims}; pass its shape")
            resolved[name] = [int(d) for d in model_dims]  # type: ignore[misc]
            continue
        if len(given) != len(model_dims):
            raise ModelRejected(
                "invalid", f"input {name!r} has rank {len(model_dims)} ({model_dims}); input_shape gives {given}"
            )
        for axis, (want, got) in enumerate(zip(model_dims, given, strict=True)):
            if want is not None and want != got:
                raise ModelRejected(
                    "invalid", f"input {name!r} is {model_dims} in the model; input_shape gives {given} (axis {axis})"
                )
        resolved[name] = list(given)
    if memory_bytes:
        for name, dims in resolved.items():
            need = _bytes(inputs[name], dims)
            if need > memory_bytes:
                raise ModelRejected("limit", _over_memory(f"input {name!r} {dims}", need, memory_bytes))
    return resolved


def check_intermediates(model: onnx.ModelProto, shapes: dict[str, list[int]], memory_bytes: int) -> None:
    """Refuse a model whose static shape inference gives a tensor over the worker's memory limit."""
    typed = onnx.ModelProto()
    typed.CopyFrom(model)
    for value in typed.graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, shapes[value.name], strict=True):
                dim.Clear()
                dim.dim_value = size
    try:
        typed = onnx.shape_inference.infer_shapes(typed, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is advisory; the runtime limits still hold
        return
    for value in [*typed.graph.value_info, *typed.graph.output]:
        if value.type.tensor_type.elem_type == TensorProto.UNDEFINED:
            continue
        dims = _dims(value)
        if dims and all(d is not None for d in dims):
            need = _bytes(value, dims)  # type: ignore[arg-type]
            if need > memory_bytes:
                raise ModelRejected("limit", _over_memory(f"tensor {value.name!r} {dims}", need, memory_bytes))


def _over_memory(what: str, need: int, limit: int) -> str:
    return (
        f"{what} needs {need / 2**20:,.0f} MiB; the measurement worker's memory limit is "
        f"{limit / 2**20:,.0f} MiB (HALP_WORKER_MEMORY_MB)"
    )


def check_upload(data: bytes, declared: dict[str, list[int]] | None, memory_bytes: int | None) -> dict[str, list[int]]:
    """Parse, check and return the input shapes to measure ``data`` with."""
    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError and friends
        raise ModelRejected("invalid", f"not an ONNX model: {str(e)[:200]}") from None
    shapes = resolve_inputs(model, declared, memory_bytes)
    if memory_bytes:
        check_intermediates(model, shapes, memory_bytes)
    return shapes
