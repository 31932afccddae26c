"""The device's single measurement lane: one build-and-time at a time (SPEC 4), in the worker."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from profiler_service.errors import DeviceBusy, Interrupted
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
        # whose call holds the lane (a job id; None for an upload), and the interrupts that came for an
        # owner before its call started: an abort hits its own call only, and is never lost
        self._owners = threading.Lock()
        self._in_call = False
        self._owner: str | None = None
        self._pending: dict[str, str] = {}

    @contextmanager
    def _call_of(self, owner: str | None) -> Iterator[None]:
        with self._owners:
            reason = self._pending.pop(owner, None) if owner is not None else None
            if reason is not None:
                self._metrics.points_aborted.inc()
                raise Interrupted(reason)
            self._in_call, self._owner = True, owner
            self.worker.arm()
        try:
            yield
        finally:
            with self._owners:
                self._in_call, self._owner = False, None

    def layer(self, shape: LayerShape, cin: int, cout: int, owner: str | None = None) -> LatencyStats:
        with self._lane, self._call_of(owner), self._metrics.device_busy.track_inprogress():
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
            with self._call_of(None), self._metrics.device_busy.track_inprogress():
                result = self.worker.model(path, input_shapes, self._deadline_s)
            self._metrics.models_measured.inc()
            return result
        finally:
            self._lane.release()

    def interrupt(self, reason: str, owner: str | None = None) -> None:
        """Abort ``owner``'s call: now if it holds the lane, else as it starts (a cancel). Without an
        owner, whatever the worker is doing (shutdown)."""
        with self._owners:
            if owner is None or self._owner == owner:
                if self._in_call:  # counted where a call is stopped, not where nothing ran
                    self._metrics.points_aborted.inc()
                self.worker.interrupt(reason)
            else:
                self._pending[owner] = reason

    def forget(self, owner: str) -> None:
        """``owner`` makes no more calls (its job ended): drop an interrupt it never reached."""
        with self._owners:
            self._pending.pop(owner, None)
