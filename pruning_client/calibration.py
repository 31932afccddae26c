"""Fitting a target's latency model to whole-model measurements: ``ms = a * table_sum + b`` (SPEC 5).

Layers timed alone miss fusion, launch overhead and the ops between them, so
the sum of a configuration's table entries is mapped to measured milliseconds
by a line fitted per target. The fit's quality is reported as leave-one-out
errors: each sample predicted by the line fitted to the others, which a fit
through two points cannot fake (its in-sample residuals are always zero).

What a layer timed alone over-counts differs by kind of layer: a depthwise
conv on a CPU pays layout conversions at its input and output about as long
as its arithmetic, a dense conv much less. The per-kind model gives each kind
with enough layers and time its own slope (``ms = sum_k a_k * sum_k + b``),
pulled towards the global slope; it is used only where its leave-one-out
errors are half the line's or less (on a noisy host a per-kind fit of five
samples can beat the line on them by chance and predict worse).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from profiler_service.shapes import LayerShape

PROBE_FRACTIONS = (1.0, 0.75, 0.5)  # channel fractions measured to fit a, b: three, so one can be left out
KINDS = ("dense", "depthwise", "grouped", "linear")
MIN_LAYERS = 3  # a kind with fewer layers than this shares the global slope ...
MIN_SHARE = 0.05  # ... as does one with less of the unpruned tables' time
HUBER_EPSILON = 1.35  # residuals past this many scales count linearly (sklearn's default, 95 % efficient)
RIDGE = 1e-3  # pull of each kind's slope towards the global one (see _kind_slopes)
CHOOSE_MARGIN = 0.5  # per-kind replaces the line only where it halves its leave-one-out errors ...
CHOOSE_FLOOR = 1e-4  # ... and smaller by more than this (0.01 % of a latency is a tie)


class CalibrationError(ValueError):
    """The measurements cannot define a line: too few distinct configurations, or a non-positive slope."""


@dataclass
class Calibration:
    a: float = 1.0
    b: float = 0.0
    samples: list[tuple[float, float]] = field(default_factory=list)  # (table sum, measured ms)
    # "line": fitted to the samples; "per-kind": a slope per kind of layer; "anchored": through the
    # unpruned model (no line fitted); "tables": the tables' own sum (not calibrated)
    kind: str = "tables"
    slopes: dict[str, float] = field(default_factory=dict)  # per-kind: each fitted kind's slope; others a
    by_kind: list[list[float]] = field(default_factory=list)  # per-kind: per sample, each kind's sum, the rest's

    def weight(self, layer_kind: str) -> float:
        """A layer's table time as it counts in ``table_sum``: its kind's slope relative to ``a``."""
        return self.slopes.get(layer_kind, self.a) / self.a

    def predict(self, table_sum: float) -> float:
        """Milliseconds for a table sum (weighted by ``weight`` per layer)."""
        return self.a * table_sum + self.b

    def describe(self) -> str:
        """The model in one line: ``a x tables + b``, with the per-kind slopes when there are any."""
        slopes = "".join(f", {k} x{s:.3f}" for k, s in self.slopes.items())
        return f"{self.kind}: {self.a:.3f} x tables {self.b:+.4f} ms" + (f" ({slopes[2:]})" if slopes else "")

    def to_table(self, ms: float) -> float:
        """The table sum whose prediction is ``ms``: budgets in milliseconds become knapsack capacities."""
        return (ms - self.b) / self.a

    @property
    def residuals(self) -> list[float]:
        """Leave-one-out relative error of every sample; empty with fewer than three samples."""
        if len(self.samples) < 3:
            return []
        measured = np.array([m for _, m in self.samples])
        x = np.array(self.by_kind) if self.kind == "per-kind" else np.array([[s] for s, _ in self.samples])
        out = []
        for i in range(len(measured)):
            rest = np.arange(len(measured)) != i
            try:
                slopes, b = _fit_columns(x[rest], measured[rest], per_kind=self.kind == "per-kind")
            except CalibrationError:
                continue
            out.append(float((x[i] @ slopes + b - measured[i]) / measured[i]))
        return out


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The line through (table sum, ms); robust (Huber loss) from three samples on, so a sample timed in
    a noise burst pulls it little (a least-squares refit chased such samples mid-run until the
    intercept alone filled the budget)."""
    if len(x) < 2 or np.ptp(x) <= 1e-9 * x.max():
        raise CalibrationError("calibration needs measurements of at least two different configurations")
    a, b = _huber(x, y) if len(x) > 2 else (None, None)
    if a is None:  # two samples, or the robust solver gave up: least squares
        a, b = np.polyfit(x, y, 1)
    if a <= 0:
        raise CalibrationError(f"calibration gave a non-positive slope a={a:.3g}: measurements are too noisy")
    return float(a), float(b)


def _huber(x: np.ndarray, y: np.ndarray) -> tuple[float | None, float | None]:
    """The Huber line, or (None, None) where l-BFGS-b stops abnormally (seen once on a CI host)."""
    from sklearn.linear_model import HuberRegressor  # 1.7 s to import: only where a line is fitted

    unit = float(np.abs(y).max()) or 1.0  # in units of the largest sample: the solver's tolerances are absolute
    huber = HuberRegressor(epsilon=HUBER_EPSILON, alpha=0.0, max_iter=1000, tol=1e-10)
    try:
        huber.fit(x[:, None] / unit, y / unit)
    except ValueError:
        return None, None
    return float(huber.coef_[0]), float(huber.intercept_) * unit


def _fit_columns(x: np.ndarray, y: np.ndarray, per_kind: bool) -> tuple[np.ndarray, float]:
    """Slopes per column of ``x`` and the intercept: one line through the row sums, or per kind."""
    a, b = _line(x.sum(1), y)
    if not per_kind:
        return np.full(x.shape[1], a), b
    return _kind_slopes(x, y, a)


def _kind_slopes(x: np.ndarray, y: np.ndarray, a: float) -> tuple[np.ndarray, float]:
    """Ridge regression of the fitted kinds' slopes towards ``a`` (the last column, the rest, stays at ``a``).

    A slope moved by ``delta`` costs ``RIDGE * (delta * largest sum of its kind)^2``: a few per cent of
    that error on the largest configuration. The samples move a slope wherever they tell the kinds
    apart (a stronger pull kept a depthwise slope of 0.4 near the global 1.06 on five samples); where
    they do not (kinds thinned only together), the pull alone decides and the slope stays global.
    """
    kinds = x[:, :-1]
    target = y - a * x[:, -1]
    scale = np.sqrt(RIDGE) * kinds.max(0)
    samples = np.hstack([kinds, np.ones((len(y), 1))])
    pulls = np.hstack([np.diag(scale), np.zeros((len(scale), 1))])
    design = np.vstack([samples, pulls])
    solution = np.linalg.lstsq(design, np.concatenate([target, scale * a]), rcond=None)[0]
    slopes, b = solution[:-1], float(solution[-1])
    if (slopes <= 0).any():
        raise CalibrationError(f"a per-kind slope came out non-positive ({slopes.round(3).tolist()})")
    return np.append(slopes, a), b


def fit(sums: Sequence[float], measured: Sequence[float]) -> Calibration:
    """Least-squares line through (table sum, measured ms); needs two distinct sums and a positive slope."""
    x, y = np.asarray(sums, dtype=float), np.asarray(measured, dtype=float)
    a, b = _line(x, y)
    return Calibration(a, b, list(zip(x.tolist(), y.tolist(), strict=True)), kind="line")


def fit_per_kind(by_kind: np.ndarray, measured: Sequence[float], kinds: Sequence[str]) -> Calibration:
    """A slope per kind in ``kinds`` (columns of ``by_kind``; its last column, the other layers, at the
    global slope) and one intercept."""
    x, y = np.asarray(by_kind, dtype=float), np.asarray(measured, dtype=float)
    slopes, b = _fit_columns(x, y, per_kind=True)
    samples = list(zip(x.sum(1).tolist(), y.tolist(), strict=True))
    return Calibration(float(slopes[-1]), b, samples, "per-kind", dict(zip(kinds, slopes[:-1].tolist(), strict=True)),
                       x.tolist())  # fmt: skip


def best_fit(by_kind: np.ndarray, measured: Sequence[float], kinds: Sequence[str]) -> Calibration:
    """The line, or the per-kind model where its leave-one-out errors are clearly smaller (median sizes)."""
    x = np.asarray(by_kind, dtype=float)
    line = fit(x.sum(1), measured)
    if not kinds:
        return line
    try:
        per_kind = fit_per_kind(x, measured, kinds)
    except CalibrationError:
        return line
    errors = [np.median(np.abs(c.residuals)) if c.residuals else np.inf for c in (line, per_kind)]
    better = errors[1] < CHOOSE_MARGIN * errors[0] and errors[0] - errors[1] > CHOOSE_FLOOR
    return per_kind if better else line


def layer_kind(shape: LayerShape) -> str:
    if shape.op == "linear":
        return "linear"
    if shape.groups == 0:
        return "depthwise"
    return "grouped" if shape.groups > 1 else "dense"


def fitted_kinds(kinds: Sequence[str], times: np.ndarray) -> list[str]:
    """The kinds with enough layers and time of their own for a slope (the others share the global one)."""
    of = np.asarray(kinds)
    return [
        k for k in KINDS
        if (of == k).sum() >= MIN_LAYERS and times[of == k].sum() >= MIN_SHARE * times.sum()
    ]  # fmt: skip


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


def kind_probe_keeps(sizes: np.ndarray, blocks: Sequence[int], shares: np.ndarray) -> list[np.ndarray]:
    """Copies in which the kinds vary independently of each other: per fitted kind (columns of
    ``shares``, each group's fraction of table time in that kind), the groups above that kind's median
    share thinned to half; none with fewer than two kinds (the uniform probes then suffice)."""
    if shares.shape[1] < 2:
        return []
    out = []
    for k in range(shares.shape[1]):
        thin = shares[:, k] > np.median(shares[:, k])
        if thin.any():
            half = probe_keeps(sizes, blocks, (0.5,))[0]
            out.append(np.where(thin, half, sizes))
    return out
