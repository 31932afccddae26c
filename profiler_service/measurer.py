"""The device's single measurement lane: one build-and-time at a time (SPEC 4)."""

from __future__ import annotations

import threading
import time

from profiler_service.backends import Backend
from profiler_service.metrics import Metrics
from profiler_service.shapes import LayerShape
from profiler_service.timing import LatencyStats, TimingPolicy


class Measurer:
    def __init__(self, backend: Backend, policy: TimingPolicy, metrics: Metrics) -> None:
        self.backend = backend
        self.policy = policy
        self._metrics = metrics
        self._lock = threading.Lock()  # parallel timing on one device would corrupt both results

    def layer(self, shape: LayerShape, cin: int, cout: int) -> LatencyStats:
        with self._lock:
            start = time.perf_counter()
            stats = self.backend.time_layer(shape, cin, cout, self.policy)
            self._metrics.point_seconds.observe(time.perf_counter() - start)
            self._metrics.points_measured.inc()
            return stats

    def model(self, onnx_bytes: bytes, input_shapes: dict[str, list[int]] | None) -> LatencyStats:
        with self._lock:
            stats = self.backend.time_model(onnx_bytes, input_shapes, self.policy)
            self._metrics.models_measured.inc()
            return stats
