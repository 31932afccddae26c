"""The joint (cin, cout) optimum: every group's channel count chosen under the true layer latencies.

A layer's latency depends on both groups it touches: the one it reads (cin) and the one it writes
(cout). ``knapsack.solve`` decides on a separable approximation (each group credited with the other
groups held where they are) that the pruner then checks and tightens; this module solves the real
problem: maximise ``sum_g value[g][x_g]`` subject to ``sum_f table_f[x_f] <= budget``, each factor
``f`` a layer's latency table over the options of the (one or two, or more) groups it depends on.

Residual networks have little interaction structure: a bottleneck's inner groups meet only each
other and the residual group. The solver is a dynamic programme over the groups in an order that
keeps the set of *open* groups (decided, with a factor still to come) small: two for ResNets and
MobileNets. Its states are (choice of the open groups, cost, value) triples; per choice of the open
groups only Pareto-optimal (cost, value) pairs survive, and a state whose value plus an LP bound on
what the remaining groups can add cannot beat the incumbent by more than ``rtol`` is dropped, so
the result is within ``rtol`` of the optimum. Everything is numpy over the state arrays.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAX_STATES = 2_000_000  # past this many live states the instance is declared too large (None)
MAX_OPEN = 4096  # largest product of option counts of the open groups an order may need


@dataclass(frozen=True)
class Factor:
    """A cost over the options of ``groups`` (distinct, any order): ``table[o_1, ..., o_k]``."""

    groups: tuple[int, ...]
    table: np.ndarray


@dataclass
class JointProblem:
    values: list[np.ndarray]  # per group, per option
    factors: list[Factor]
    constant: float = 0.0  # latency of what depends on no group
    order: list[int] | None = None  # a good order to decide the groups in, if known (the network's own)

    @property
    def options(self) -> list[int]:
        return [len(v) for v in self.values]

    def cost(self, choice: Sequence[int]) -> float:
        """The true total latency of a choice (one option per group)."""
        return self.constant + math.fsum(float(f.table[tuple(int(choice[g]) for g in f.groups)]) for f in self.factors)

    def value(self, choice: Sequence[int]) -> float:
        return math.fsum(float(v[int(k)]) for v, k in zip(self.values, choice, strict=True))


def elimination_order(problem: JointProblem) -> tuple[list[int], int] | None:
    """The order to decide the groups in, and the widest open set it needs (the product of the open
    groups' option counts); None when neither the problem's own order nor a greedy one stays within
    ``MAX_OPEN``.

    A network's execution order (each group where it is first written) keeps a residual network's
    open set at two groups; the greedy order (least width next) is the fallback for other problems.
    """
    n = len(problem.values)
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for f in problem.factors:
        for g in f.groups:
            neighbours[g] |= set(f.groups) - {g}
    sizes = problem.options

    def width(done: set[int]) -> int:
        return math.prod(sizes[h] for h in done if neighbours[h] - done)

    def widest(order: list[int]) -> int:
        done: set[int] = set()
        most = 1
        for g in order:
            done.add(g)
            most = max(most, width(done))
        return most

    candidates = []
    if problem.order is not None and sorted(problem.order) == list(range(n)):
        candidates.append(list(problem.order))
    greedy: list[int] = []
    done: set[int] = set()
    for _ in range(n):
        rest = [g for g in range(n) if g not in done]
        g = min(rest, key=lambda g: (width(done | {g}), -len(neighbours[g] & done), g))
        done.add(g)
        greedy.append(g)
    candidates.append(greedy)
    best = min(candidates, key=widest)
    return (best, widest(best)) if widest(best) <= MAX_OPEN else None


class _Plan:
    """The decision order and, per step, the factors paid and the groups left open."""

    def __init__(self, problem: JointProblem, order: list[int], lo: np.ndarray) -> None:
        self.problem, self.order, self.lo = problem, order, lo
        n = len(order)
        position = {g: i for i, g in enumerate(order)}
        self.at_step: list[list[Factor]] = [[] for _ in range(n)]  # each factor: paid at its last group
        for f in problem.factors:
            self.at_step[max(position[g] for g in f.groups)].append(f)
        last_use = [position[g] for g in range(n)]
        for f in problem.factors:
            for g in f.groups:
                last_use[g] = max(last_use[g], *(position[h] for h in f.groups))
        self.open: list[list[int]] = [[]]  # open[i]: groups decided in the first i steps, still needed
        for i, g in enumerate(order):
            self.open.append([h for h in [*self.open[-1], g] if last_use[h] > i])
        # options below a group's minimum are not allowed: -inf in every value they would add
        self.values = [np.where(np.arange(len(v)) >= lo[g], v, -np.inf) for g, v in enumerate(problem.values)]

    @staticmethod
    def expand(table: np.ndarray, groups: Sequence[int], axes: list[int]) -> np.ndarray:
        """``table`` over ``groups`` broadcast to the axes ``axes`` (a superset of them)."""
        if not groups:
            return table
        order = sorted(range(len(groups)), key=lambda j: axes.index(groups[j]))
        moved = np.transpose(table, order)
        shape = [1] * len(axes)
        for j in order:
            shape[axes.index(groups[j])] = table.shape[j]
        return moved.reshape(shape)

    def step_gain(self, i: int, lam: float) -> tuple[np.ndarray, list[int]]:
        """Value minus ``lam`` x cost added at step i, over the open groups before it and the group decided."""
        g = self.order[i]
        axes = [*self.open[i], g]
        gain = self.expand(self.values[g], [g], axes)
        for f in self.at_step[i]:
            gain = gain - lam * self.expand(f.table, f.groups, axes)
        return gain, axes

    def lagrangian(self, lam: float) -> tuple[list[np.ndarray], np.ndarray]:
        """The most ``value - lam x cost`` still to gain after each step, per choice of the groups open
        then (dense, one table per step), and the choice that attains it from the start."""
        sizes = self.problem.options
        to_go: list[np.ndarray] = [np.zeros(())] * (len(self.order) + 1)
        ahead: list[np.ndarray] = [np.zeros(())] * len(self.order)
        for i in range(len(self.order) - 1, -1, -1):
            gain, axes = self.step_gain(i, lam)
            ahead[i] = np.broadcast_to(
                gain + self.expand(to_go[i + 1], self.open[i + 1], axes), [sizes[h] for h in axes]
            )
            to_go[i] = ahead[i].max(axis=-1)
        choice = np.zeros(len(self.order), dtype=np.int64)
        for i, g in enumerate(self.order):
            choice[g] = int(np.argmax(ahead[i][tuple(int(choice[h]) for h in self.open[i])]))
        return to_go, choice


def solve_joint(
    problem: JointProblem,
    budget: float,
    incumbent: Sequence[int] | None = None,
    rtol: float = 1e-3,
    min_option: Sequence[int] | None = None,
) -> np.ndarray | None:
    """The choice (an option per group) of most value whose true cost is within ``budget``, to ``rtol``.

    ``incumbent``: a feasible choice to beat (the separable solution). ``min_option``: per group, the
    first option allowed. None when no choice fits, when the interaction structure is too wide
    (``MAX_OPEN``) or the states outgrow ``MAX_STATES`` before any choice fits: the caller keeps what
    it had.

    The bound that prunes the states is Lagrangian: for any ``lam >= 0``, what the remaining groups
    can add within the budget left is at most ``max(value - lam x cost) + lam x budget left``, and
    that maximum is exact over the pairwise structure (a DP over the open groups' choices). ``lam``
    is found by bisection on the cost of the Lagrangian choice, whose feasible end is an incumbent.
    The search first keeps only states that can come within ``rtol / 4`` of the dual bound, then
    widens: the bound is tight on these problems, so few states live. Costs must not be negative
    (table latencies are not).
    """
    planned = elimination_order(problem)
    if planned is None:
        return None
    n = len(problem.values)
    lo = np.zeros(n, dtype=np.int64) if min_option is None else np.asarray(min_option, dtype=np.int64)
    plan = _Plan(problem, planned[0], lo)
    lagrangian = functools.cache(plan.lagrangian)  # the bisection's ends are needed again for the bound
    capacity = budget - problem.constant
    candidates = [np.asarray(incumbent, dtype=np.int64)] if incumbent is not None else []
    low, high = 0.0, 1.0
    choice = lagrangian(low)[1]
    candidates.append(choice)
    if problem.cost(choice) > budget:  # the budget binds: bracket and bisect the multiplier
        while problem.cost(choice := lagrangian(high)[1]) > budget and high < 1e12:
            low, high = high, high * 4
        candidates.append(choice)
        for _ in range(50):
            mid = 0.5 * (low + high)
            choice = lagrangian(mid)[1]
            candidates.append(choice)
            low, high = (mid, high) if problem.cost(choice) > budget else (low, mid)
            if high - low <= 1e-9 * high:
                break
    feasible = [c for c in candidates if problem.cost(c) <= budget and (c >= lo).all()]
    best = max(feasible, key=problem.value) if feasible else None
    best_value = problem.value(best) if best is not None else -np.inf
    tables = [(lam, lagrangian(lam)[0]) for lam in sorted({low, high})]
    # the dual bound: no choice within the budget is worth more than this
    bound = min(lam * capacity + float(to_go[0]) for lam, to_go in tables)
    floor = best_value + rtol * abs(best_value) + 1e-12 if best is not None else -np.inf
    # Search only above a threshold just under the bound: every choice worth more survives, so the
    # best survivor is the optimum whenever the optimum is above it. Lower it until a choice survives
    # or it reaches what the incumbent already guarantees (within rtol of the optimum).
    delta = rtol / 4 or 1e-4  # exact (rtol 0) too: the ladder only orders the passes
    while True:
        threshold = bound - delta * abs(bound)
        last = not np.isfinite(threshold) or threshold <= floor or delta >= 1
        found = _search(plan, tables, capacity, floor if last else threshold)
        # a survivor worth less than the threshold proves nothing: the optimum may have been cut
        if last or (found is not None and problem.value(found) > threshold):
            return found if found is not None and (best is None or problem.value(found) > best_value) else best
        delta *= 4


def _search(plan: _Plan, tables, capacity: float, threshold: float) -> np.ndarray | None:
    """The best choice worth more than ``threshold`` within ``capacity`` (None if none, or too many states).

    States are (choice of the open groups, cost, value); per open choice only Pareto-optimal (cost,
    value) pairs go on, and a state whose Lagrangian bound is not above the threshold is dropped.
    """
    problem, lo = plan.problem, plan.lo
    assign = np.zeros((1, 0), dtype=np.int64)
    cost, value = np.zeros(1), np.zeros(1)
    parents: list[np.ndarray] = []
    picks: list[np.ndarray] = []
    for i, g in enumerate(plan.order):
        options = np.arange(int(lo[g]), problem.options[g])
        s, m = len(cost), len(options)
        new_cost = np.repeat(cost, m)
        new_value = np.repeat(value, m) + np.tile(problem.values[g][options], s)
        columns = {h: np.repeat(assign[:, j], m) for j, h in enumerate(plan.open[i])}
        columns[g] = np.tile(options, s)
        for f in plan.at_step[i]:
            new_cost = new_cost + f.table[tuple(columns[h] for h in f.groups)]
        key = tuple(columns[h] for h in plan.open[i + 1])
        potential = np.full(len(new_cost), np.inf)
        for lam, to_go in tables:
            potential = np.minimum(potential, new_value + lam * (capacity - new_cost) + to_go[i + 1][key])
        potential[new_cost > capacity] = -np.inf  # costs are not negative: past the budget stays past it
        alive = np.flatnonzero(potential > threshold)
        if alive.size == 0:
            return None
        keys = np.stack([k[alive] for k in key], 1) if key else np.zeros((alive.size, 0), dtype=np.int64)
        alive = alive[_pareto_per_key(keys, new_cost[alive], new_value[alive])]
        if alive.size > MAX_STATES:
            return None
        assign = np.stack([k[alive] for k in key], 1) if key else np.zeros((alive.size, 0), dtype=np.int64)
        cost, value = new_cost[alive], new_value[alive]
        parents.append(alive // m)
        picks.append(options[alive % m])
    winner = int(np.argmax(value))
    choice = np.empty(len(plan.order), dtype=np.int64)
    for i in range(len(plan.order) - 1, -1, -1):
        choice[plan.order[i]] = picks[i][winner]
        winner = int(parents[i][winner])
    return choice


def _pareto_per_key(keys: np.ndarray, cost: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Indices of the states that no state with the same key beats in both cost and value."""
    if len(cost) == 0:
        return np.zeros(0, dtype=np.int64)
    if keys.shape[1]:
        _, key_id = np.unique(keys, axis=0, return_inverse=True)
        key_id = key_id.ravel()
    else:
        key_id = np.zeros(len(cost), dtype=np.int64)
    order = np.lexsort((-value, cost, key_id))  # per key: by cost, best value first among equal costs
    k, v = key_id[order], value[order]
    # running maximum of value within each key's run: offset each key above every value before it
    span = float(v.max() - v.min()) + 1.0
    shifted = v - v.min() + k * span
    before = np.concatenate(([-np.inf], np.maximum.accumulate(shifted)[:-1]))
    first = np.concatenate(([True], k[1:] != k[:-1]))
    keep = first | (shifted > before)
    return order[keep]


def solve_joint_milp(
    problem: JointProblem, budget: float, min_option: Sequence[int] | None = None, gap: float = 1e-9
) -> np.ndarray | None:
    """The reference: the pairwise problem as a MILP (scipy's HiGHS), None when no choice fits.

    One binary per (group, option), one per group chosen; a factor over two groups gets a continuous
    variable per option pair whose marginals are the two groups' binaries (the local-polytope
    linearisation: tighter than ``y >= x_a + x_b - 1`` and exact at integral points).
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_array

    sizes = problem.options
    lo = np.zeros(len(sizes), dtype=np.int64) if min_option is None else np.asarray(min_option, dtype=np.int64)
    x_start = np.concatenate(([0], np.cumsum(sizes)))
    n_x = int(x_start[-1])
    pairs = [f for f in problem.factors if len(f.groups) == 2]
    if any(len(f.groups) > 2 for f in problem.factors):
        raise ValueError("the MILP reference takes factors over one or two groups")
    y_start = np.concatenate(([n_x], n_x + np.cumsum([f.table.size for f in pairs])))
    n = int(y_start[-1])
    cost_row = np.zeros(n)
    for f in problem.factors:
        if len(f.groups) == 1:
            cost_row[x_start[f.groups[0]] : x_start[f.groups[0] + 1]] += f.table
    for f, start in zip(pairs, y_start, strict=False):
        cost_row[start : start + f.table.size] = f.table.ravel()
    rows, cols, vals, lower, upper = [], [], [], [], []

    def add(row_cols: np.ndarray, row_vals: np.ndarray, lb: float, ub: float) -> None:
        rows.append(np.full(len(row_cols), len(lower)))
        cols.append(row_cols)
        vals.append(row_vals)
        lower.append(lb)
        upper.append(ub)

    for g, size in enumerate(sizes):
        add(np.arange(x_start[g], x_start[g] + size), np.ones(size), 1, 1)
    for f, start in zip(pairs, y_start, strict=False):
        a, b = f.groups
        grid = np.arange(f.table.size).reshape(f.table.shape) + start
        for o in range(sizes[a]):  # sum_p y[o, p] = x_a[o]
            add(np.append(grid[o, :], x_start[a] + o), np.append(np.ones(sizes[b]), -1.0), 0, 0)
        for p in range(sizes[b]):
            add(np.append(grid[:, p], x_start[b] + p), np.append(np.ones(sizes[a]), -1.0), 0, 0)
    add(np.arange(n), cost_row, -np.inf, budget - problem.constant)
    matrix = coo_array((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(len(lower), n))
    objective = np.zeros(n)
    objective[:n_x] = -np.concatenate(problem.values)
    upper_x = np.ones(n)
    for g in range(len(sizes)):
        upper_x[x_start[g] : x_start[g] + int(lo[g])] = 0  # options below the minimum are not allowed
    res = milp(
        objective,
        constraints=[LinearConstraint(matrix.tocsr(), np.array(lower), np.array(upper))],
        integrality=np.concatenate((np.ones(n_x), np.zeros(n - n_x))),
        bounds=Bounds(np.zeros(n), upper_x),
        options={"mip_rel_gap": gap},
    )
    if res.x is None:
        return None
    return np.array([int(np.argmax(res.x[x_start[g] : x_start[g + 1]])) for g in range(len(sizes))])
