"""The targets of a run: what a run needs of a profiler, and the whole-model measurements made on it.

A target is reached through anything with ``RemoteTarget``'s surface (its
device, table points on demand, whole-model timings): a service over HTTP, or
``profiler_service.local_target.LocalTarget`` in the same process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np

from profiler_service.schemas import DeviceInfo, MeasureResult
from pruning_client.calibration import Calibration, CalibrationError, anchored
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

    def calibrate(self, probes: Sequence[tuple[np.ndarray, bytes]], input_shape: str) -> str | None:
        """Time the probe configurations (the unpruned model first) and fit the latency model to them.

        Samples that define no line (a noise burst) are measured once more; if the fit still fails the
        prediction is anchored at the measured unpruned model (``calibration.anchored``: what the tables
        do not time as a fixed cost) and the returned note says so.
        """
        self.samples = []
        for attempt in range(2):
            results = interleaved(self.profiler, [onnx for _, onnx in probes], input_shape)
            self.before = self.before if attempt else results[0]
            self.samples += [(keep.copy(), r.median_ms) for (keep, _), r in zip(probes, results, strict=True)]
            try:
                self.latency.calibrate(self.samples)
                return None
            except CalibrationError as e:
                error = e
        table_sum = float(self.latency.table_times(probes[0][0]).sum())  # anchored: every layer at weight 1
        cal = self.latency.calibration = anchored(table_sum, self.before.median_ms)
        return (
            f"no line fits the measurements ({error}): predicting through the unpruned model's "
            f"{self.before.median_ms:.3f} ms (a={cal.a:.3f}, b={cal.b:.4f}: the tables' sum, and what they "
            "do not time as a fixed cost)"
        )

    def state_dict(self) -> dict:
        """The calibration and its samples, for a checkpoint (the tables live on the service and in the cache)."""
        return {
            "calibration": dataclasses.asdict(self.latency.calibration),
            "samples": [(keep.copy(), ms) for keep, ms in self.samples],
            "before": self.before.model_dump() if self.before else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.latency.calibration = Calibration(**state["calibration"])
        self.samples = [(np.asarray(keep), ms) for keep, ms in state["samples"]]
        self.before = MeasureResult(**state["before"]) if state["before"] else None

    def refit_if_drifted(self, keep: np.ndarray, measured_ms: float) -> str | None:
        """Add a measured step to the samples; refit when the prediction missed it by more than ``DRIFT``.

        Returns what happened, or None when the prediction held. A noise burst can leave samples that
        define no line (a negative slope was seen mid-run): the previous fit is kept, never the run lost.
        """
        self.samples.append((keep.copy(), measured_ms))
        if abs(self.latency.predict(keep) - measured_ms) <= DRIFT * measured_ms:
            return None
        previous = self.latency.calibration
        try:
            cal = self.latency.calibrate(self.samples)
        except CalibrationError as e:
            self.latency.calibration = previous
            return (
                f"prediction drifted, but the samples define no line ({e}); kept a={previous.a:.3f} b={previous.b:.4f}"
            )
        return f"prediction drifted; refit a={cal.a:.3f} b={cal.b:.4f}"
