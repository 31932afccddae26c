"""The targets of a run: what a run needs of a profiler, and the whole-model measurements made on it.

A target is reached through anything with ``RemoteTarget``'s surface (its
device, table points on demand, whole-model timings): a service over HTTP, or
``profiler_service.local_target.LocalTarget`` in the same process.
"""

from __future__ import annotations

import dataclasses
import os
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
NOISY = 0.10  # a comparison whose rounds spread more than this is timed again ...
MAX_SETS = 3  # ... up to this many sets of ROUNDS rounds in all (HALP_PAIRED_SETS overrides)


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


def _rounds(profiler: Profiler, models: Sequence[bytes], input_shape: str) -> list[list[MeasureResult]]:
    """``ROUNDS`` rounds, each timing every model once in turn: per model, its ``ROUNDS`` results."""
    runs = [[profiler.measure(m, input_shape) for m in models] for _ in range(ROUNDS)]
    return [list(side) for side in zip(*runs, strict=True)]


def _median_run(side: Sequence[MeasureResult]) -> MeasureResult:
    return sorted(side, key=lambda r: r.median_ms)[len(side) // 2]


def interleaved(profiler: Profiler, models: Sequence[bytes], input_shape: str) -> list[MeasureResult]:
    """Each model timed ``ROUNDS`` times in turn, the median run of each: their ratios survive slow drift."""
    return [_median_run(side) for side in _rounds(profiler, models, input_shape)]


@dataclass(frozen=True)
class Paired:
    """A candidate timed against the reference in the same rounds: drift between rounds cancels in ``ratio``."""

    ratio: float  # median over the rounds of candidate / reference within a round
    spread: float  # half the range of the rounds' ratios (bursts trimmed, see ``paired``), relative to ``ratio``
    reference: MeasureResult  # the median round of each
    candidate: MeasureResult
    rounds: int = ROUNDS  # rounds pooled: more where the first set was noisy

    def describe(self) -> str:
        again = f", {self.rounds} rounds" if self.rounds > ROUNDS else ""
        return f"{self.ratio:.3f} x unpruned (+-{self.spread:.1%}{again})"


def _spread(ratios: Sequence[float]) -> float:
    """Half the range of the ratios, one extreme round at either end dropped per set beyond the first
    (sets of ``ROUNDS``): each set timed again buys one round a noise burst may have spoiled (one set:
    the plain half range)."""
    drop = len(ratios) // ROUNDS - 1
    middle = np.sort(ratios)[drop : len(ratios) - drop]
    return float(np.ptp(middle)) / 2 / float(np.median(ratios))


def paired(profiler: Profiler, reference: bytes, candidates: Sequence[bytes], input_shape: str) -> list[Paired]:
    """Each candidate's latency as a ratio of the reference's, timed interleaved with it on one target.

    A candidate whose rounds spread more than ``NOISY`` is timed again, a set of ``ROUNDS`` rounds at a
    time (up to ``MAX_SETS``), and its rounds pooled: a ratio read once in a burst on a busy host
    (1.09 x unpruned for a model pruned to 0.7, +-85 %) is what a calibration must not be fitted to.
    ``HALP_PAIRED_SETS=1`` times each comparison once: where noise is known and accepted (the test
    suite's parallel workers), the sets after the first only slow a run down.
    """
    refs: list[MeasureResult] = []
    sides: list[list[MeasureResult]] = [[] for _ in candidates]
    ratios: list[list[float]] = [[] for _ in candidates]
    todo = list(range(len(candidates)))
    for _ in range(max_sets()):
        timed = _rounds(profiler, [reference, *(candidates[i] for i in todo)], input_shape)
        refs += timed[0]
        ref = np.array([r.median_ms for r in timed[0]])
        for i, side in zip(todo, timed[1:], strict=True):
            sides[i] += side
            ratios[i] += (np.array([r.median_ms for r in side]) / ref).tolist()
        todo = [i for i in todo if _spread(ratios[i]) > NOISY]
        if not todo:
            break
    return [
        Paired(float(np.median(r)), _spread(r), _median_run(refs), _median_run(side), len(r))
        for r, side in zip(ratios, sides, strict=True)
    ]


def max_sets() -> int:
    """``HALP_PAIRED_SETS``, or ``MAX_SETS``; checked when a run starts, not first at its calibration."""
    value = os.environ.get("HALP_PAIRED_SETS", str(MAX_SETS))
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"HALP_PAIRED_SETS must be a positive whole number of sets, not {value!r}")
    return int(value)


@dataclass
class Target:
    profiler: Profiler
    latency: LatencyModel
    samples: list[tuple[np.ndarray, float]] = field(default_factory=list)  # (keep, measured ms)
    before: MeasureResult | None = None  # the unpruned model, from calibration

    def calibrate(self, probes: Sequence[tuple[np.ndarray, bytes]], input_shape: str) -> str | None:
        """Time the probe configurations against the unpruned model (the first probe) and fit the
        latency model to them.

        Every sample is a paired ratio, counted in the unpruned model's milliseconds as measured here
        (``before``): host drift between measurements cancels. Samples that define no line (a noise
        burst) are measured once more; if the fit still fails the prediction is anchored at the
        measured unpruned model (``calibration.anchored``: what the tables do not time as a fixed
        cost) and the returned note says so.
        """
        self.samples = []
        (full, reference), rest = probes[0], probes[1:]
        for attempt in range(2):
            pairs = paired(self.profiler, reference, [onnx for _, onnx in rest], input_shape)
            if not attempt:
                self.before = pairs[0].reference if pairs else interleaved(self.profiler, [reference], input_shape)[0]
                self.samples.append((full.copy(), self.before.median_ms))
            ms = self.before.median_ms
            self.samples += [(keep.copy(), p.ratio * ms) for (keep, _), p in zip(rest, pairs, strict=True)]
            try:
                self.latency.calibrate(self.samples)
                return None
            except CalibrationError as e:
                error = e
        table_sum = float(self.latency.table_times(full).sum())  # anchored: every layer at weight 1
        cal = self.latency.calibration = anchored(table_sum, self.before.median_ms)
        return (
            f"no line fits the measurements ({error}): predicting through the unpruned model's "
            f"{self.before.median_ms:.3f} ms (a={cal.a:.3f}, b={cal.b:.4f}: the tables' sum, and what they "
            "do not time as a fixed cost)"
        )

    def measure_against(self, unpruned: bytes, candidate: bytes, input_shape: str) -> Paired:
        """The candidate's paired ratio to the unpruned model on this target."""
        return paired(self.profiler, unpruned, [candidate], input_shape)[0]

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

    def learn(self, keep: np.ndarray, pair: Paired) -> str:
        """Add a paired measurement to the samples and refit on all of them (robustly: one outlier
        moves the line little). A noise burst can leave samples that define no line (a negative
        slope was seen mid-run): the previous fit is kept, never the run lost."""
        self.before = self.before or pair.reference  # not calibrated: the first pair's reference is the unit
        ms = pair.ratio * self.before.median_ms
        missed = self.latency.predict(keep) / ms - 1
        self.samples.append((keep.copy(), ms))
        if self.latency.calibration.kind == "tables":  # --no-calibrate: the tables' sum stays the prediction
            return f"measured {pair.describe()}, predicted {missed:+.1%}"
        previous = self.latency.calibration
        try:
            cal = self.latency.calibrate(self.samples)
        except CalibrationError as e:
            self.latency.calibration = previous
            return f"measured {pair.describe()}, predicted {missed:+.1%}; no line fits ({e}): kept the fit"
        refit = f"refit on {len(self.samples)} samples: {cal.describe()}"
        return f"measured {pair.describe()}, predicted {missed:+.1%}; {refit}"
