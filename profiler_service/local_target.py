"""An in-process target: this machine's backend with the surface of a remote target, and no service.

``LatencyTables.of(LocalTarget())`` fills tables and ``LocalTarget().measure(onnx, "1x3x32x32")``
times whole models as a profiler service would answer them, for library users and tests that want
no network. It runs the backend in the calling process, without the service's supervised worker,
limits or store: for trusted models only.
"""

from __future__ import annotations

import sys

from profiler_service.backends import Backend, create_backend
from profiler_service.model_check import check_upload
from profiler_service.routes.measure import parse_input_shapes
from profiler_service.schemas import DeviceInfo, MeasureResult
from profiler_service.shapes import parse_shape
from profiler_service.timing import TimingPolicy


class LocalTarget:
    def __init__(
        self, backend: str | Backend = "onnxruntime", threads: int | None = 1, policy: TimingPolicy | None = None
    ) -> None:
        self.backend = create_backend(backend, threads) if isinstance(backend, str) else backend
        self.policy = policy or TimingPolicy()
        self.device = DeviceInfo(**self.backend.device_json())
        self.fingerprint = self.device.fingerprint
        self.url = f"local:{self.device.backend}"
        self.measured_points = 0
        self.cached_points = 0  # nothing is cached in-process; kept for the remote target's surface

    def fetch(self, needed: dict[str, set[tuple[int, int]]]) -> dict[str, dict[tuple[int, int], float]]:
        out: dict[str, dict[tuple[int, int], float]] = {}
        for key, points in needed.items():
            shape = parse_shape(key)
            for cin, cout in sorted(points):
                out.setdefault(key, {})[(cin, cout)] = self.backend.time_layer(shape, cin, cout, self.policy).median_ms
                self.measured_points += 1
        return out

    def measure(self, onnx_bytes: bytes, input_shape: str | None = None) -> MeasureResult:
        shapes = check_upload(onnx_bytes, parse_input_shapes(input_shape, sys.maxsize), None)
        stats = self.backend.time_model(onnx_bytes, shapes, self.policy)
        return MeasureResult.of(self.device, stats, shapes)

    def close(self) -> None:
        self.backend.close()
