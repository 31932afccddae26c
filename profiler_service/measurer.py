"""The device's single measurement lane: one build-and-time at a time (SPEC 4)."""

from __future__ import annotations

import threading
import time

from profiler_service.backends import Backend
from profiler_service.metrics import Metrics
from profiler_service.shapes import LayerShape
from profiler_service.timing import LatencyStats, TimingPolicy, measure


class Measurer:
    def __init__(self, backend: Backend, policy: TimingPolicy, metrics: Metrics) -> None:
        self.backend = backend
        self.policy = policy
        self._metrics = metrics
        self._lock = threading.Lock()  # parallel timing on one device would corrupt both results

    def layer(self, shape: LayerShape, cin: int, cout: int) -> LatencyStats:
        with self._lock:
            start = time.perf_counter()
            runner = self.backend.build_layer(shape, cin, cout)
            try:
                stats = measure(runner.run_batch, self.policy)
            finally:
                runner.close()
            self._metrics.point_seconds.observe(time.perf_counter() - start)
            self._metrics.points_measured.inc()
            return stats

    def model(self, onnx_bytes: bytes, input_shapes: dict[str, list[int]] | None) -> LatencyStats:
        with self._lock:
            runner = self.backend.build_model(onnx_bytes, input_shapes)
            try:
                stats = measure(runner.run_batch, self.policy)
            finally:
                runner.close()
            self._metrics.models_measured.inc()
            return stats
