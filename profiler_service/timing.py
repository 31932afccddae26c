"""Adaptive timing loop shared by every backend (warm-up, repeat until stable).

Backends only know how to run their built network ``k`` times and say how
long one run took on their own clock (``perf_counter`` on CPUs, CUDA events
on GPUs); when to stop and what to report is decided here, once.

On a shared host (a cloud VM) the speed itself moves: a fixed small conv runs
anywhere between 0.10 and 0.20 ms over a minute on this project's CI machine,
and neighbouring 50 ms windows differ by 3 %. Table points timed minutes apart
then carry independent speed factors that no latency model can fit. With a
``reference`` network, every sample is divided by the reference's time just
before and after it, so the result is in units of the reference: a ratio that
the drift cancels out of, which the backend turns back into ms at one fixed
reference time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

RunBatch = Callable[[int], float]
"""``run_batch(k)`` runs the network k times back to back; returns ms per run."""


@dataclass(frozen=True, slots=True)
class TimingPolicy:
    warmup_ms: float = 30.0
    min_warmup_runs: int = 3
    round_size: int = 10  # samples per round; stability is checked between rounds
    min_sample_ms: float = 0.2  # batch runs so one sample is well above clock resolution
    rel_tol: float = 0.01  # stop when one more round moves the median less than this
    max_samples: int = 400
    max_ms: float = 3000.0  # wall-time cap of one measurement, warm-up excluded


MIN_TIMED_RUNS = TimingPolicy().min_warmup_runs + TimingPolicy().round_size
"""Runs of the network that any measurement makes, however slow each run is (the cost of a point)."""


@dataclass(frozen=True, slots=True)
class LatencyStats:
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int  # samples behind the statistics (each the mean of ``batch`` runs)
    batch: int = 1

    def scaled(self, ms: float) -> LatencyStats:
        """Statistics in units of a reference (``measure(..., reference=)``) as ms, the reference taking ``ms``."""
        return replace(self, median_ms=self.median_ms * ms, p10_ms=self.p10_ms * ms, p90_ms=self.p90_ms * ms)


def _batch(run_batch: RunBatch, policy: TimingPolicy) -> int:
    """Warm ``run_batch`` up; the runs per sample that keep one sample above ``min_sample_ms``."""
    start = time.perf_counter()
    warm: list[float] = []
    while len(warm) < policy.min_warmup_runs or (time.perf_counter() - start) * 1e3 < policy.warmup_ms:
        warm.append(run_batch(1))
        if len(warm) >= 10_000:
            break
    per_run = float(np.median(warm[len(warm) // 2 :]))
    return max(1, math.ceil(policy.min_sample_ms / max(per_run, 1e-6)))


def _bracketed(run_batch: RunBatch, batch: int, reference: RunBatch, policy: TimingPolicy) -> Callable[[], float]:
    """Samples of ``run_batch`` over the mean of the reference's samples just before and after each."""
    ref_batch = _batch(reference, TimingPolicy(warmup_ms=0.0, min_sample_ms=policy.min_sample_ms / 2))
    before = reference(ref_batch)

    def sample() -> float:
        nonlocal before
        took = run_batch(batch)
        after = reference(ref_batch)
        ratio = 2 * took / (before + after)
        before = after
        return ratio

    return sample


def measure(
    run_batch: RunBatch, policy: TimingPolicy = TimingPolicy(), reference: RunBatch | None = None
) -> LatencyStats:
    """ms per run; with ``reference``: runs of the reference per run, each sample taken between two of its runs."""
    batch = _batch(run_batch, policy)
    sample = (lambda: run_batch(batch)) if reference is None else _bracketed(run_batch, batch, reference, policy)
    samples: list[float] = []
    previous = math.inf
    loop_start = time.perf_counter()
    while True:
        samples.extend(sample() for _ in range(policy.round_size))
        median = float(np.median(samples))
        stable = abs(median - previous) <= policy.rel_tol * median
        out_of_time = (time.perf_counter() - loop_start) * 1e3 >= policy.max_ms
        if stable or out_of_time or len(samples) >= policy.max_samples:
            break
        previous = median
    p10, p50, p90 = np.percentile(samples, [10, 50, 90])
    return LatencyStats(float(p50), float(p10), float(p90), len(samples), batch)
