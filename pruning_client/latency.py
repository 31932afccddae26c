"""Latency model from per-layer tables: prediction, calibration, per-group cost curves (the separable
knapsack's) and per-layer factors over the groups a layer touches (the joint solver's).

Predicted latency of a channel configuration is ``a * sum_l T_l(cin_l, cout_l) + b``
(SPEC 5): layers timed alone miss fusion, launch overhead and the ops between
them, so ``a`` and ``b`` are fitted per target on end-to-end measurements. A
per-kind calibration weights each layer's ``T_l`` by its kind's slope over ``a``
(``LatencyModel.weights``), so every sum here, the knapsack's costs included,
stays in one unit whatever the model.
The model never measures anything itself: it says which (shape, cin, cout)
points it needs and reads them from ``LatencyTables``, which may fetch them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from pruning_client.calibration import Calibration, best_fit, fitted_kinds, layer_kind
from pruning_client.graph import ModelGraph
from pruning_client.joint import MAX_OPEN, Factor, JointProblem

Point = tuple[int, int]
Needed = dict[str, set[Point]]
Fetch = Callable[[Needed], Mapping[str, Mapping[Point, float]]]


class MissingPoints(LookupError):
    """Table points the model needs but nobody has measured (and no fetcher is set)."""


@dataclass
class LatencyTables:
    """Plain tables, shape key -> {(cin, cout): median ms}; ``fetch`` fills what is missing."""

    points: dict[str, dict[Point, float]] = field(default_factory=dict)
    fetch: Fetch | None = None
    fingerprint: str = ""

    @classmethod
    def of(cls, source) -> LatencyTables:
        """Tables filled on demand by a target: anything with ``fetch`` and ``fingerprint``
        (``RemoteTarget``, or ``profiler_service.local_target.LocalTarget`` in process)."""
        return cls(fetch=source.fetch, fingerprint=source.fingerprint)

    def missing(self, needed: Needed) -> Needed:
        out: Needed = {}
        for key, pts in needed.items():
            have = self.points.get(key, {})
            lack = {p for p in pts if p not in have}
            if lack:
                out[key] = lack
        return out

    def require(self, needed: Needed) -> None:
        lack = self.missing(needed)
        if not lack:
            return
        if self.fetch is None:
            count = sum(len(v) for v in lack.values())
            raise MissingPoints(f"{count} table points are not measured, e.g. {next(iter(lack.items()))}")
        for key, got in self.fetch(lack).items():
            self.points.setdefault(key, {}).update(got)
        still = self.missing(needed)
        if still:
            raise MissingPoints(f"the fetcher did not return {sum(len(v) for v in still.values())} points")

    def lookup(self, key: str, cin: np.ndarray, cout: np.ndarray) -> np.ndarray:
        table = self.points[key]
        return np.array([table[(int(a), int(b))] for a, b in zip(cin, cout, strict=True)])


def _add(needed: Needed, key: str, cin: Iterable[int], cout: Iterable[int]) -> None:
    needed.setdefault(key, set()).update(zip(map(int, cin), map(int, cout), strict=True))


class LatencyModel:
    """One target's latency model over a model graph (current channel counts in ``keep``)."""

    def __init__(self, graph: ModelGraph, tables: LatencyTables, calibration: Calibration | None = None) -> None:
        self.graph = graph
        self.tables = tables
        self.calibration = calibration or Calibration()
        self._keys = [lc.shape.key for lc in graph.layers]
        self._kinds = [layer_kind(lc.shape) for lc in graph.layers]
        # which layers each group's channel count reaches (as cin or cout)
        touches = (graph.f_in != 0) | (graph.f_out != 0)
        self._layers_of = [np.flatnonzero(touches[:, g]) for g in range(len(graph.groups))]

    # --- whole configurations -------------------------------------------------------------
    def points_for(self, keep: np.ndarray) -> Needed:
        cin, cout = self.graph.channels(keep)
        needed: Needed = {}
        for key, a, b in zip(self._keys, cin, cout, strict=True):
            _add(needed, key, [a], [b])
        return needed

    def weights(self) -> np.ndarray:
        """Per layer, how its table time counts in ``table_sum`` (1 unless the calibration is per kind)."""
        return np.array([self.calibration.weight(k) for k in self._kinds])

    def table_times(self, keep: np.ndarray) -> np.ndarray:
        """Per layer, its table entry as measured alone."""
        self.tables.require(self.points_for(keep))
        cin, cout = self.graph.channels(keep)
        return np.array(
            [self.tables.points[k][(int(a), int(b))] for k, a, b in zip(self._keys, cin, cout, strict=True)]
        )

    def layer_latency(self, keep: np.ndarray) -> np.ndarray:
        """Per layer, its table time as the latency model counts it."""
        return self.table_times(keep) * self.weights()

    def table_sum(self, keep: np.ndarray) -> float:
        return float(self.layer_latency(keep).sum())

    def predict(self, keep: np.ndarray) -> float:
        return self.calibration.predict(self.table_sum(keep))

    def to_table(self, ms: float) -> float:
        """A latency in ms as a table sum: what the knapsack's capacity is counted in."""
        return self.calibration.to_table(ms)

    def require(self, needed: Needed) -> None:
        """Have these points in the tables (fetched if missing): several targets can fill theirs at once."""
        self.tables.require(needed)

    def row(self, key: str, cin: int, couts: list[int]) -> list[float]:
        """One layer shape's latency at ``cin`` over ``couts`` (a staircase), fetched if missing."""
        self.tables.require({key: {(cin, c) for c in couts}})
        return [self.tables.points[key][(cin, c)] for c in couts]

    def fitted_kinds(self) -> list[str]:
        """The kinds of layer that get a slope of their own (see ``calibration.fitted_kinds``)."""
        return fitted_kinds(self._kinds, self.table_times(self.graph.sizes))

    def by_kind(self, keep: np.ndarray, kinds: list[str]) -> np.ndarray:
        """Table time per kind in ``kinds``, then the rest's."""
        times, of = self.table_times(keep), np.asarray(self._kinds)
        per_kind = [times[of == k].sum() for k in kinds]
        return np.array([*per_kind, times.sum() - sum(per_kind)])

    def kind_shares(self) -> np.ndarray:
        """(groups, fitted kinds): each group's fraction of its layers' unpruned table time in each kind."""
        times, of = self.table_times(self.graph.sizes), np.asarray(self._kinds)
        kinds = fitted_kinds(self._kinds, times)
        shares = np.zeros((len(self._layers_of), len(kinds)))
        for g, rows in enumerate(self._layers_of):
            total = times[rows].sum()
            for j, k in enumerate(kinds):
                shares[g, j] = times[rows][of[rows] == k].sum() / total if total > 0 else 0.0
        return shares

    def calibrate(self, samples: list[tuple[np.ndarray, float]]) -> Calibration:
        """Fit the latency model on (keep, measured ms) pairs: the line, or per kind where that predicts
        the samples left out better (``calibration.best_fit``)."""
        kinds = self.fitted_kinds()
        x = np.array([self.by_kind(k, kinds) for k, _ in samples])
        self.calibration = best_fit(x, [m for _, m in samples], kinds)
        return self.calibration

    # --- per-group cost curves for the knapsack --------------------------------------------
    def _curves(self, keep: np.ndarray, counts: list[np.ndarray], out_only: bool):
        """Per group: (layer, current point, cin/cout arrays over ``counts[g]``), others at ``keep``."""
        cin, cout = self.graph.channels(keep)
        for g, c in enumerate(counts):
            rows = self._layers_of[g]
            if out_only:
                rows = rows[self.graph.f_out[rows, g] != 0]
            delta = np.asarray(c)[None, :] - keep[g]
            cin_g = cin[rows, None] + np.rint(self.graph.f_in[rows, g, None] * delta).astype(np.int64)
            cout_g = cout[rows, None] + np.rint(self.graph.f_out[rows, g, None] * delta).astype(np.int64)
            yield [(r, (int(cin[r]), int(cout[r])), a, b) for r, a, b in zip(rows, cin_g, cout_g, strict=True)]

    def curve_points(self, keep: np.ndarray, counts: list[np.ndarray], out_only: bool = False) -> Needed:
        needed: Needed = {}
        for layers in self._curves(keep, counts, out_only):
            for r, _, a, b in layers:
                _add(needed, self._keys[r], a, b)
        return needed

    def cost_curves(self, keep: np.ndarray, counts: list[np.ndarray], out_only: bool = False) -> list[np.ndarray]:
        """Change of the table sum when group g keeps ``counts[g][j]`` channels, the rest unchanged.

        Credits a group both in the layers it leaves (cout) and in those it
        feeds (cin); ``out_only`` gives the paper's cout-only costs instead.
        The sum of these changes is the separable approximation of the new
        total; the pruner checks the true 2-D sum afterwards.
        """
        self.tables.require(self.curve_points(keep, counts, out_only))
        self.tables.require(self.points_for(keep))
        curves, weight = [], self.weights()
        for c, layers in zip(counts, self._curves(keep, counts, out_only), strict=True):
            total = np.zeros(len(c))
            for r, now, a, b in layers:
                total += weight[r] * (self.tables.lookup(self._keys[r], a, b) - self.tables.points[self._keys[r]][now])
            curves.append(total)
        return curves

    # --- layer factors for the joint solver -------------------------------------------------
    def _factor_grids(self, keep: np.ndarray, counts: list[np.ndarray]):
        """Per layer: the groups it depends on and (cin, cout) over every combination of their counts;
        None when a layer's combinations pass ``joint.MAX_OPEN`` (a concatenation of many groups)."""
        cin, cout = self.graph.channels(keep)
        out = []
        for r in range(len(self._keys)):
            groups = tuple(int(g) for g in np.flatnonzero((self.graph.f_in[r] != 0) | (self.graph.f_out[r] != 0)))
            if math.prod(len(counts[g]) for g in groups) > MAX_OPEN:
                return None
            axes = np.meshgrid(*(np.asarray(counts[g]) - keep[g] for g in groups), indexing="ij")
            shape = axes[0].shape if axes else ()
            cin_r = np.full(shape, cin[r], dtype=np.int64)
            cout_r = np.full(shape, cout[r], dtype=np.int64)
            for g, delta in zip(groups, axes, strict=True):
                cin_r = cin_r + np.rint(self.graph.f_in[r, g] * delta).astype(np.int64)
                cout_r = cout_r + np.rint(self.graph.f_out[r, g] * delta).astype(np.int64)
            out.append((r, groups, cin_r, cout_r))
        return out

    def factor_points(self, keep: np.ndarray, counts: list[np.ndarray]) -> Needed | None:
        """Table points the joint problem needs: every layer over all combinations of its groups' counts."""
        grids = self._factor_grids(keep, counts)
        return None if grids is None else self._grid_points(grids)

    def _grid_points(self, grids) -> Needed:
        needed: Needed = {}
        for r, _, a, b in grids:
            _add(needed, self._keys[r], a.ravel(), b.ravel())
        return needed

    def joint_problem(
        self, keep: np.ndarray, counts: list[np.ndarray], values: list[np.ndarray]
    ) -> JointProblem | None:
        """The true table-sum problem over the groups' counts (option j of group g keeps ``counts[g][j]``),
        one factor per layer that depends on a group; None when a layer depends on too many groups."""
        grids = self._factor_grids(keep, counts)
        if grids is None:
            return None
        self.tables.require(self._grid_points(grids))
        factors, constant, weight = [], 0.0, self.weights()
        for r, groups, a, b in grids:
            table = weight[r] * self.tables.lookup(self._keys[r], a.ravel(), b.ravel()).reshape(a.shape)
            if groups:
                factors.append(Factor(groups, table))
            else:
                constant += float(table)
        order = list(dict.fromkeys(int(g) for r in range(len(self._keys)) for g in np.flatnonzero(self.graph.f_out[r])))
        order += [g for g in range(len(values)) if g not in order]  # groups no layer writes (none, normally)
        return JointProblem([np.asarray(v, dtype=np.float64) for v in values], factors, constant, order)
