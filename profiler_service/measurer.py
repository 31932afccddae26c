"""The device's single measurement lane: one build-and-time at a time (SPEC 4), in the worker."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

from profiler_service.errors import DeviceBusy
from profiler_service.metrics import Metrics
from profiler_service.shapes import LayerShape
from profiler_service.timing import LatencyStats
from profiler_service.worker import Worker


class Measurer:
    def __init__(self, worker: Worker, metrics: Metrics, deadline_s: float, measure_wait_s: float) -> None:
        self.worker = worker
        self._metrics = metrics
        self._deadline_s = deadline_s
        self._measure_wait_s = measure_wait_s
        self._lane = threading.Lock()  # parallel timing on one device would corrupt both results

    def layer(self, shape: LayerShape, cin: int, cout: int) -> LatencyStats:
        with self._lane, self._metrics.device_busy.track_inprogress():
            start = time.perf_counter()
            stats = self.worker.layer(shape.key, cin, cout, self._deadline_s)
            self._metrics.point_seconds.observe(time.perf_counter() - start)
            self._metrics.points_measured.inc()
            return stats

    def model(self, path: Path, input_shapes: dict[str, list[int]] | None) -> tuple[LatencyStats, dict[str, list[int]]]:
        """Time an upload; a device busy past ``measure_wait_s`` answers 503 rather than queueing forever."""
        if not self._lane.acquire(timeout=self._measure_wait_s):
            raise DeviceBusy(
                f"the device stayed busy for {self._measure_wait_s:g} s (HALP_MEASURE_WAIT_S); try again later",
                retry_after_s=max(1, math.ceil(self._measure_wait_s)),
            )
        try:
            with self._metrics.device_busy.track_inprogress():
                result = self.worker.model(path, input_shapes, self._deadline_s)
            self._metrics.models_measured.inc()
            return result
        finally:
            self._lane.release()

    def interrupt(self, reason: str) -> None:
        """Abort whatever the worker is doing now (cancel, shutdown)."""
        self.worker.interrupt(reason)
