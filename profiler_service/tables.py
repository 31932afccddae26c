"""Table reads and request validation behind the /lut routes."""

from __future__ import annotations

from profiler_service import store
from profiler_service.errors import NotFound, OverLimit
from profiler_service.schemas import LutPoint, LutTable
from profiler_service.shapes import MAX_POINTS_PER_REQUEST, LayerShape
from profiler_service.state import ServiceState


def read_table(
    svc: ServiceState, shape: LayerShape, cin: list[int] | None = None, cout: list[int] | None = None
) -> LutTable:
    cin_set, cout_set = (set(cin) if cin else None), (set(cout) if cout else None)
    with svc.sessions() as session:
        sid = store.shape_id(session, shape.key)
        rows = store.points_of(session, svc.device_id, sid) if sid is not None else []
    points = [
        LutPoint(
            cin=r.cin,
            cout=r.cout,
            median_ms=r.median_ms,
            p10_ms=r.p10_ms,
            p90_ms=r.p90_ms,
            runs=r.runs,
            measured_at=r.measured_at,
        )
        for r in rows
        if (cin_set is None or r.cin in cin_set) and (cout_set is None or r.cout in cout_set)
    ]
    if not points:
        raise NotFound(f"no points of {shape.key} are measured on this device; POST /lut/{shape.key} to measure")
    return LutTable(shape=shape.key, fingerprint=svc.device.fingerprint, backend=svc.device.backend, points=points)


def check_request(svc: ServiceState, shape: LayerShape, pairs: list[tuple[int, int]]) -> None:
    """Enforce SPEC 3: point count, valid channels, and tensors that fit the memory budget."""
    if len(pairs) > MAX_POINTS_PER_REQUEST:
        raise OverLimit(f"{len(pairs)} points requested; at most {MAX_POINTS_PER_REQUEST} per request")
    if shape.dtype not in svc.device.precisions:
        raise OverLimit(
            f"{shape.dtype} is not supported by backend {svc.device.backend} here "
            f"(supported: {', '.join(svc.device.precisions)})"
        )
    for cin, cout in pairs:
        shape.check_point(cin, cout)
    budget = int(svc.device.memory_bytes * svc.settings.memory_fraction)
    if budget:
        worst = max(pairs, key=lambda p: shape.tensor_bytes(*p))
        need = shape.tensor_bytes(*worst)
        if need > budget:
            raise OverLimit(
                f"point {worst} needs {need / 2**20:.0f} MiB of tensors; the device budget is "
                f"{budget / 2**20:.0f} MiB (HALP_MEMORY_FRACTION)"
            )
