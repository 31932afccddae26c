"""Fitting a target's latency model to whole-model measurements: ``ms = a * table_sum + b`` (SPEC 5).

Layers timed alone miss fusion, launch overhead and the ops between them, so
the sum of a configuration's table entries is mapped to measured milliseconds
by a line fitted per target. The fit's quality is reported as leave-one-out
errors: each sample predicted by the line fitted to the others, which a fit
through two points cannot fake (its in-sample residuals are always zero).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

PROBE_FRACTIONS = (1.0, 0.75, 0.5)  # channel fractions measured to fit a, b: three, so one can be left out


class CalibrationError(ValueError):
    """The measurements cannot define a line: too few distinct configurations, or a non-positive slope."""


@dataclass
class Calibration:
    a: float = 1.0
    b: float = 0.0
    samples: list[tuple[float, float]] = field(default_factory=list)  # (table sum, measured ms)
    # "line": fitted to the samples; "anchored": through the unpruned model (no line fitted);
    # "tables": the tables' own sum (not calibrated)
    kind: str = "tables"

    def predict(self, table_sum: float) -> float:
        return self.a * table_sum + self.b

    def to_table(self, ms: float) -> float:
        """The table sum whose prediction is ``ms``: budgets in milliseconds become knapsack capacities."""
        return (ms - self.b) / self.a

    @property
    def residuals(self) -> list[float]:
        """Leave-one-out relative error of every sample; empty with fewer than three samples."""
        if len(self.samples) < 3:
            return []
        sums, measured = np.array(self.samples).T
        out = []
        for i in range(len(sums)):
            rest = np.arange(len(sums)) != i
            if np.ptp(sums[rest]) <= 1e-9 * sums.max():
                continue
            a, b = np.polyfit(sums[rest], measured[rest], 1)
            out.append(float((a * sums[i] + b - measured[i]) / measured[i]))
        return out


def fit(sums: Sequence[float], measured: Sequence[float]) -> Calibration:
    """Least-squares line through (table sum, measured ms); needs two distinct sums and a positive slope."""
    x, y = np.asarray(sums, dtype=float), np.asarray(measured, dtype=float)
    if len(x) < 2 or np.ptp(x) <= 1e-9 * x.max():
        raise CalibrationError("calibration needs measurements of at least two different configurations")
    a, b = np.polyfit(x, y, 1)
    if a <= 0:
        raise CalibrationError(f"calibration gave a non-positive slope a={a:.3g}: measurements are too noisy")
    return Calibration(float(a), float(b), list(zip(x.tolist(), y.tolist(), strict=True)), kind="line")


def anchored(table_sum: float, measured_ms: float) -> Calibration:
    """The prediction when no line fits: the tables' sum shifted through the measured unpruned model.

    The difference is counted as a fixed cost ``b``, not dropped. Positive, it is what the tables do
    not time (attention's matmuls and softmax, norms, the ops between layers): with a third of a
    network untimed, the tables' sum alone would aim a 0.5 budget at 0.67 of the real latency.
    Negative, it is the overhead every layer timed alone pays and the network does not: a ratio of
    the sum alone would ask for more than pruning can remove.
    """
    return Calibration(1.0, measured_ms - table_sum, kind="anchored")


def probe_keeps(sizes: np.ndarray, blocks: Sequence[int], fractions: Sequence[float] = PROBE_FRACTIONS):
    """Channels per group of each probe configuration: ``fraction`` of every group in whole blocks, at
    least one block; a fraction of 1 is the unpruned model (a group need not be a whole number of blocks)."""
    return [
        np.asarray(sizes).copy()
        if f >= 1
        else np.array([min(s, max(b, int(s * f) // b * b)) for s, b in zip(sizes, blocks, strict=True)])
        for f in fractions
    ]
