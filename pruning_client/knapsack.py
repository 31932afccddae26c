"""Multiple-choice knapsack over "keep the top k blocks" choices per coupled group.

``solve`` picks one k per group maximising kept saliency under a latency
budget. Costs are latency staircases: not monotone, of any sign. For one
target it is a branch-and-bound DP over groups whose state lists stay small:

1. each group's options are cut to its Pareto frontier (cheaper *and* more
   valuable), which removes every option on a latency plateau but the last;
2. the LP relaxation (upper concave hulls, segments merged by slope) bounds
   what the remaining groups can add for any leftover budget, and its greedy
   rounding gives a feasible incumbent;
3. groups are added one at a time; partial choices whose bound cannot beat
   the incumbent, or that are Pareto-dominated, are dropped.

All steps are numpy array operations; nothing loops over capacity units.
With ``rtol=0`` the result is optimal (float costs included); a positive
``rtol`` prunes partial choices that cannot beat the incumbent by more than
that fraction, which bounds the gap by ``rtol``. Several targets go to
``multi_knapsack.solve_several`` (LP-priced search), within ``MULTI_TARGET_GAP``
of the optimum and checked exactly.

``solve_paper`` re-implements the paper's augmented knapsack for comparison.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pruning_client.multi_knapsack import milp_choice, pareto_options, solve_several

ArrayLike = Sequence[float] | np.ndarray


MULTI_TARGET_GAP = 1e-3  # the 0.1 % the contract allows (SPEC 5)


class Infeasible(ValueError):
    """No choice fits the budget, even keeping the minimum everywhere."""


@dataclass(frozen=True)
class _Frontier:
    """Pareto options of one group: cost and value strictly increasing together."""

    k: np.ndarray
    cost: np.ndarray
    value: np.ndarray


def _frontier(cost: np.ndarray, value: np.ndarray, lo: int) -> _Frontier:
    k = np.arange(lo, len(cost))
    c, v = cost[lo:], value[lo:]
    order = np.lexsort((-v, c))  # by cost, best value first among equal costs
    c, v, k = c[order], v[order], k[order]
    best_before = np.concatenate(([-np.inf], np.maximum.accumulate(v)[:-1]))
    keep = v > best_before
    return _Frontier(k[keep], c[keep], v[keep])


def _hull(f: _Frontier) -> np.ndarray:
    """Frontier indices of the upper concave hull's vertices (slopes decreasing)."""
    # Monotone chain; the loop is over one group's frontier points, not over capacity.
    hull = [0]
    for i in range(1, len(f.cost)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (f.cost[b] - f.cost[a]) * (f.value[i] - f.value[a]) - (f.value[b] - f.value[a]) * (
                f.cost[i] - f.cost[a]
            )
            if cross >= 0:  # b lies on or below the chord a-i
                hull.pop()
            else:
                break
        hull.append(i)
    return np.array(hull)


class _SuffixBounds:
    """LP upper bound on the value groups i.. can add with a given budget, for every i."""

    def __init__(self, fronts: list[_Frontier]) -> None:
        self.min_cost = np.zeros(len(fronts) + 1)
        self.base_value = np.zeros(len(fronts) + 1)
        self.knots: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(1), np.zeros(1))] * (len(fronts) + 1)
        self.hulls = [_hull(f) for f in fronts]
        segments = [(np.diff(f.cost[h]), np.diff(f.value[h])) for f, h in zip(fronts, self.hulls, strict=True)]
        for i in range(len(fronts) - 1, -1, -1):
            self.min_cost[i] = self.min_cost[i + 1] + fronts[i].cost[0]
            self.base_value[i] = self.base_value[i + 1] + fronts[i].value[0]
            dc = np.concatenate([s[0] for s in segments[i:]])
            dv = np.concatenate([s[1] for s in segments[i:]])
            order = np.argsort(-(dv / dc), kind="stable")
            x = np.concatenate(([self.min_cost[i]], self.min_cost[i] + np.cumsum(dc[order])))
            y = np.concatenate(([self.base_value[i]], self.base_value[i] + np.cumsum(dv[order])))
            self.knots[i] = (x, y)
        self.segments = segments

    def bound(self, i: int, budget: np.ndarray) -> np.ndarray:
        x, y = self.knots[i]
        out = np.interp(budget, x, y)  # flat beyond the last knot: everything kept
        return np.where(budget < self.min_cost[i], -np.inf, out)


def _greedy(fronts: list[_Frontier], bounds: _SuffixBounds, budget: float, cost: list[np.ndarray]) -> np.ndarray:
    """Feasible rounding of the LP: take hull steps by slope while they fit (k per group)."""
    seg_group = np.concatenate([np.full(len(s[0]), g) for g, s in enumerate(bounds.segments)]).astype(np.int64)
    seg_step = np.concatenate([np.arange(len(s[0])) for s in bounds.segments]).astype(np.int64)
    dc = np.concatenate([s[0] for s in bounds.segments])
    dv = np.concatenate([s[1] for s in bounds.segments])
    used = float(bounds.min_cost[0])
    step = np.zeros(len(fronts), dtype=np.int64)
    for j in np.argsort(-(dv / dc), kind="stable"):  # one pass over hull segments
        g = seg_group[j]
        if seg_step[j] == step[g] and used + dc[j] <= budget:
            used += dc[j]
            step[g] += 1
    keep = np.array([int(f.k[h[s]]) for f, h, s in zip(fronts, bounds.hulls, step, strict=True)])
    while _total(cost, keep) > budget:  # rounding drift: undo the last steps until it fits
        g = int(np.argmax(step))
        step[g] -= 1
        keep[g] = fronts[g].k[bounds.hulls[g][step[g]]]
    return keep


def _total(costs: list[np.ndarray], keep: np.ndarray) -> float:
    return math.fsum(float(c[k]) for c, k in zip(costs, keep, strict=True))


def _check_inputs(values: Sequence[ArrayLike], costs: Sequence[ArrayLike], min_keep) -> tuple:
    if len(values) != len(costs) or not values:
        raise ValueError("values and costs need one entry per group (and at least one group)")
    vals = [np.asarray(v, dtype=np.float64) for v in values]
    cost = [np.asarray(c, dtype=np.float64) for c in costs]
    for g, (v, c) in enumerate(zip(vals, cost, strict=True)):
        if v.ndim != 1 or c.shape[-1] != len(v):
            raise ValueError(f"group {g}: values has {v.shape}, costs has {c.shape}; need (n+1,) and (n+1,)/(T,n+1)")
        if not (np.isfinite(v).all() and np.isfinite(c).all()):
            raise ValueError(f"group {g}: values and costs must be finite")
    lo = np.zeros(len(vals), dtype=np.int64) if min_keep is None else np.asarray(min_keep, dtype=np.int64)
    if lo.shape != (len(vals),) or (lo < 0).any() or any(lo[g] >= len(vals[g]) for g in range(len(vals))):
        raise ValueError("min_keep needs one count per group, each within 0..n_g")
    return vals, cost, lo


def solve(
    values: Sequence[ArrayLike],
    costs: Sequence[ArrayLike],
    budget: float | Sequence[float],
    min_keep: Sequence[int] | np.ndarray | None = None,
    rtol: float = 0.0,
) -> np.ndarray:
    """k per group maximising ``sum values[g][k_g]`` with ``sum costs[g][..., k_g] <= budget``.

    ``values[g]`` has shape (n_g+1,); ``costs[g]`` (n_g+1,) for one target or
    (T, n_g+1) for T targets with ``budget`` of length T. Raises ``Infeasible``
    when even the cheapest choice breaks a budget.
    """
    vals, cost, lo = _check_inputs(values, costs, min_keep)
    budgets = np.atleast_1d(np.asarray(budget, dtype=np.float64))
    if cost[0].ndim == 2 or len(budgets) > 1:
        return _solve_multi(vals, [np.atleast_2d(c) for c in cost], budgets, lo)
    return _solve_single(vals, cost, float(budgets[0]), lo, rtol)


def _solve_single(vals: list[np.ndarray], cost: list[np.ndarray], budget: float, lo: np.ndarray, rtol: float):
    fronts = [_frontier(c, v, int(m)) for c, v, m in zip(cost, vals, lo, strict=True)]
    cheapest = np.array([int(f.k[0]) for f in fronts])
    if _total(cost, cheapest) > budget:
        raise Infeasible(f"no choice fits the budget {budget:.6g}: the cheapest needs {_total(cost, cheapest):.6g}")
    bounds = _SuffixBounds(fronts)
    keep = _branch_and_bound(fronts, bounds, vals, cost, budget, rtol)
    if _total(cost, keep) <= budget:
        return keep
    # The DP adds costs in sequence, which can overshoot the exact sum by a few ulps: leave that slack.
    scale = abs(budget) + sum(float(np.abs(c).max()) for c in cost)
    return _branch_and_bound(fronts, bounds, vals, cost, budget - 4 * len(cost) * np.finfo(float).eps * scale, rtol)


def _branch_and_bound(
    fronts: list[_Frontier], bounds: _SuffixBounds, vals: list[np.ndarray], cost: list[np.ndarray],
    capacity: float, rtol: float,
) -> np.ndarray:  # fmt: skip
    incumbent = _greedy(fronts, bounds, capacity, cost)
    best = math.fsum(float(v[k]) for v, k in zip(vals, incumbent, strict=True))

    state_cost, state_value = np.zeros(1), np.zeros(1)
    parents: list[np.ndarray] = []
    options: list[np.ndarray] = []
    for i, f in enumerate(fronts):
        new_cost = (state_cost[:, None] + f.cost[None, :]).ravel()
        new_value = (state_value[:, None] + f.value[None, :]).ravel()
        potential = new_value + bounds.bound(i + 1, capacity - new_cost)
        alive = np.flatnonzero(potential > best * (1 + rtol) + 1e-12 * abs(best))
        if alive.size == 0:
            return incumbent
        alive = alive[np.lexsort((-new_value[alive], new_cost[alive]))]
        v = new_value[alive]
        front = v > np.concatenate(([-np.inf], np.maximum.accumulate(v)[:-1]))
        alive = alive[front]
        state_cost, state_value = new_cost[alive], new_value[alive]
        parents.append(alive // len(f.cost))
        options.append(alive % len(f.cost))
    winner = int(np.argmax(state_value))
    if state_value[winner] <= best:
        return incumbent
    keep = np.empty(len(fronts), dtype=np.int64)
    for i in range(len(fronts) - 1, -1, -1):
        keep[i] = fronts[i].k[options[i][winner]]
        winner = int(parents[i][winner])
    return keep


def solve_milp(
    values: Sequence[ArrayLike],
    costs: Sequence[ArrayLike],
    budget: float | Sequence[float],
    min_keep: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """The plain MILP (scipy's HiGHS) over every option: the reference ``solve`` is checked against."""
    vals, cost, lo = _check_inputs(values, costs, min_keep)
    rows = [np.atleast_2d(c) for c in cost]
    budgets = np.atleast_1d(np.asarray(budget, dtype=np.float64))
    keep = milp_choice(vals, rows, budgets, [np.arange(int(m), len(v)) for v, m in zip(vals, lo, strict=True)])
    if keep is None:
        raise Infeasible(f"no choice fits the budgets {budgets.tolist()}")
    return keep


def _solve_multi(vals: list[np.ndarray], cost: list[np.ndarray], budgets: np.ndarray, lo: np.ndarray):
    targets = cost[0].shape[0]
    if len(budgets) != targets or any(c.shape[0] != targets for c in cost):
        raise ValueError(f"{len(budgets)} budgets for costs of {targets} targets")
    options = [pareto_options(c, v, int(m)) for c, v, m in zip(cost, vals, lo, strict=True)]
    keep = solve_several(vals, cost, budgets, options, rtol=MULTI_TARGET_GAP)
    if keep is None:
        cheapest = np.array([int(m) + int(np.argmin(c[:, m:].max(0))) for c, m in zip(cost, lo, strict=True)])
        totals = [math.fsum(float(cost[g][t, cheapest[g]]) for g in range(len(cost))) for t in range(targets)]
        raise Infeasible(f"no choice fits the budgets {budgets.tolist()}; keeping the minimum costs {totals}")
    return keep


def solve_paper(
    values: Sequence[ArrayLike],
    costs: Sequence[ArrayLike],
    budget: float,
    disable_layer_prune: bool = False,
    value_scale: float = 1e6,
    cost_scale: float = 1000.0,
) -> np.ndarray:
    """The paper's augmented knapsack (HALP, NeurIPS 2022), re-implemented as a baseline.

    Items are a group's blocks, most important first, each worth its own
    saliency and costing its latency delta, both rounded to integers (latency
    x 1000); a DP over items x integer capacity takes a block only if the
    previous item is taken at the remaining capacity (or the block opens its
    group). Negative deltas are absorbed by enlarging the capacity by their
    sum, and ``disable_layer_prune`` marks each group's first block as kept at
    every capacity, as the original does (which is how it can overshoot).
    The budget applies to ``sum costs[g][k_g]`` as in ``solve``: the capacity
    is what is left after every group's ``costs[g][0]``. Returns blocks kept
    per group. Vectorised over capacity; order, roundings, tie rules and
    Python's negative-index wrap-around are the original's.
    """
    vals = [np.asarray(v, dtype=np.float64) for v in values]
    cost = [np.asarray(c, dtype=np.float64) for c in costs]
    order = range(len(vals) - 1, -1, -1)  # the original walks its reversed item list
    item_value = np.concatenate([np.round(np.diff(vals[g]) * value_scale) for g in order]).astype(np.int64)
    item_weight = np.concatenate([np.round(np.diff(cost[g]) * cost_scale) for g in order]).astype(np.int64)
    first = np.concatenate([np.arange(len(vals[g]) - 1) == 0 for g in order])
    group = np.concatenate([np.full(len(vals[g]) - 1, g) for g in order])
    capacity = int(round((budget - math.fsum(float(c[0]) for c in cost)) * cost_scale))
    if capacity >= item_weight.sum():
        return np.array([len(v) - 1 for v in vals])
    if capacity < 0:
        raise Infeasible(f"budget {budget:.6g} is below the cost of keeping nothing")
    original_capacity = capacity
    capacity += int(-item_weight[item_weight < 0].sum())
    width = capacity + 1
    w_axis = np.arange(width)
    table = np.zeros(width)
    keep = np.zeros((len(item_value), width), dtype=bool)
    prev_keep = np.zeros(width, dtype=bool)
    for i, (wi, vi, opens) in enumerate(zip(item_weight, item_value, first, strict=True)):
        src = w_axis - wi
        skip = src > capacity
        src = np.clip(np.where(src < 0, src + width, src), 0, capacity)  # Python's table[w - wi]
        take_value = vi + table[src]
        larger = (take_value > table) | ((take_value == table) & (wi == 0))
        general = (wi <= w_axis) & larger & (opens | prev_keep[src])
        row = general | (disable_layer_prune and opens)
        keep[i] = row & ~skip
        table = np.where(general & ~skip, take_value, table)
        prev_keep = keep[i]
    kept = np.zeros(len(vals), dtype=np.int64)
    w = original_capacity
    for i in range(len(item_value) - 1, -1, -1):
        if keep[i, w % width]:
            kept[group[i]] += 1
            w -= int(item_weight[i])
    return kept
