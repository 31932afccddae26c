"""The targets of a run: what a run needs of a profiler, and the whole-model measurements made on it.

A target is reached through anything with ``RemoteTarget``'s surface (its
device, table points on demand, whole-model timings): a service over HTTP, or
``profiler_service.local_target.LocalTarget`` in the same process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np

from profiler_service.schemas import DeviceInfo, MeasureResult
from pruning_client.latency import LatencyModel, Needed, Point

T = TypeVar("T")
ROUNDS = 5  # interleaved measurements per comparison; one ratio alone spread +-4 % on a 2-core VM
DRIFT = 0.05  # refit a, b when a measured step is this far from the prediction


class Profiler(Protocol):
    url: str
    fingerprint: str
    device: DeviceInfo
    measured_points: int
    cached_points: int

    def fetch(self, needed: Needed) -> dict[str, dict[Point, float]]: ...

    def measure(self, onnx_bytes: bytes, input_shape: str | None = None) -> MeasureResult: ...


def parallel(fn: Callable[[T], object], items: Sequence[T]) -> list:
    """One thread per target: services measure independently, so their waits overlap."""
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(fn, items))


def interleaved(profiler: Profiler, models: Sequence[bytes], input_shape: str) -> list[MeasureResult]:
    """Each model timed ``ROUNDS`` times in turn, the median run of each: their ratios survive slow drift."""
    runs = [[profiler.measure(m, input_shape) for m in models] for _ in range(ROUNDS)]
    return [sorted(side, key=lambda r: r.median_ms)[ROUNDS // 2] for side in zip(*runs, strict=True)]


@dataclass
class Target:
    profiler: Profiler
    latency: LatencyModel
    samples: list[tuple[np.ndarray, float]] = field(default_factory=list)  # (keep, measured ms)
    before: MeasureResult | None = None  # the unpruned model, from calibration

    def calibrate(self, probes: Sequence[tuple[np.ndarray, bytes]], input_shape: str) -> None:
        """Time the probe configurations (the unpruned model first) and fit the latency model to them."""
        results = interleaved(self.profiler, [onnx for _, onnx in probes], input_shape)
        self.before = results[0]
        self.samples = [(keep.copy(), r.median_ms) for (keep, _), r in zip(probes, results, strict=True)]
        self.latency.calibrate(self.samples)

    def refit_if_drifted(self, keep: np.ndarray, measured_ms: float) -> bool:
        """Add a measured step to the samples; refit when the prediction missed it by more than ``DRIFT``."""
        self.samples.append((keep.copy(), measured_ms))
        if abs(self.latency.predict(keep) - measured_ms) <= DRIFT * measured_ms:
            return False
        self.latency.calibrate(self.samples)
        return True
