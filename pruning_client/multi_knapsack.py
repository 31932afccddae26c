"""Several targets: one k per group, every target's latency within its own budget.

The single-target solver's Pareto frontiers collapse in one cost dimension; in several they do
not (options cheap on one target are dear on another), so this solver works from the LP
relaxation instead. Its multipliers ``lam`` (one per target, HiGHS dual simplex on the
Pareto-reduced options) price every option: with ``d[g][k] = max_j (v - lam.c)[g][j] -
(v - lam.c)[g][k] >= 0``, any choice ``x`` meeting the budgets has

    value(x) = U - sum_g d[g][x_g] - lam . slack(x),        U = the LP bound,

so a choice worth more than ``z`` uses only options with ``d < U - z`` and has a total loss
(reduced costs plus priced slack) below ``U - z``. Three steps:

1. an incumbent: the LP vertex (at most T groups fractional) rounded by trying its support
   options, then the best single-group upgrades while every budget allows;
2. a beam dive: the search below keeping only the states of least loss, for a better incumbent,
   then exchanges of one or two groups' options among those a choice that would prove itself
   within ``rtol`` could use (a two-group change trades one target's slack for another's);
3. the exact search: groups added one at a time over their options with ``d < delta``, where
   ``delta = U - z (1 + rtol)``; a partial choice is dropped when its loss plus the slack the
   remaining options cannot use reaches ``delta``, when the cheapest completion breaks a budget,
   or when another is no dearer on every target and worth at least as much.

When the LP's bound already proves the incumbent within ``rtol`` (most instances), steps 2-3 do
nothing; a better incumbent from step 2 shrinks what step 3 must search, often below the size
where its states explode. Every solution worth more than ``z (1 + rtol)`` survives step 3, so the
result is within ``rtol`` of the optimum. Step 3 runs over a widening ``delta`` (narrow searches are cheap and
usually find the optimum, which then needs no wider one). A search past ``MAX_STATES`` hands over
to HiGHS's MILP on the options priced below what the incumbent lacks (a few per group).
"""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)

BEAM = 128  # states the dive keeps per group
MAX_STATES = 1024  # live states past which the search hands over to HiGHS (its dominance check is quadratic)
MAX_ROUNDINGS = 1 << 16  # mixes of the fractional groups' options the rounding tries
MAX_EXCHANGE = 512  # options the exchanges consider (the least priced): their pairs are held in memory


def pareto_options(cost: np.ndarray, value: np.ndarray, lo: int) -> np.ndarray:
    """Options of one group not dominated in (every target's cost, value); duplicates once."""
    k = np.arange(lo, cost.shape[1])
    c, v = cost[:, lo:], value[lo:]
    no_worse = (c[:, :, None] <= c[:, None, :]).all(0) & (v[:, None] >= v[None, :])
    better = (c[:, :, None] < c[:, None, :]).any(0) | (v[:, None] > v[None, :])
    dominated = (no_worse & better).any(0)
    same = (c[:, :, None] == c[:, None, :]).all(0) & (v[:, None] == v[None, :])
    dup = np.triu(same, 1).any(0)
    return k[~dominated & ~dup]


class _Options:
    """Every group's allowed options, flattened: value, cost per target, group."""

    def __init__(self, vals: list[np.ndarray], cost: list[np.ndarray], options: list[np.ndarray]) -> None:
        self.k = np.concatenate(options)
        self.group = np.concatenate([np.full(len(o), g) for g, o in enumerate(options)])
        self.value = np.concatenate([v[o] for v, o in zip(vals, options, strict=True)])
        self.cost = np.hstack([c[:, o] for c, o in zip(cost, options, strict=True)])  # (T, n)
        self.starts = np.flatnonzero(np.r_[True, self.group[1:] != self.group[:-1]])
        self.groups = len(options)

    def lp(self, budgets: np.ndarray) -> tuple[float, np.ndarray, np.ndarray] | None:
        """The LP relaxation: bound, multipliers per target, a vertex (x per option); None if infeasible.

        Raises OverflowError when HiGHS stops for another reason (the MILP then takes over)."""
        from scipy.optimize import linprog
        from scipy.sparse import coo_array

        n = len(self.value)
        one_each = coo_array((np.ones(n), (self.group, np.arange(n))), shape=(self.groups, n))
        res = linprog(-self.value, A_ub=self.cost, b_ub=budgets, A_eq=one_each, b_eq=np.ones(self.groups),
                      bounds=(0, 1), method="highs-ds")  # fmt: skip
        if res.status == 2:
            return None
        if res.status != 0:
            raise OverflowError(f"the LP relaxation stopped: {res.message}")
        return -float(res.fun), np.maximum(-res.ineqlin.marginals, 0.0), res.x

    def reduced_costs(self, lam: np.ndarray) -> np.ndarray:
        priced = self.value - lam @ self.cost
        return np.maximum.reduceat(priced, self.starts)[self.group] - priced

    def totals(self, pick: np.ndarray) -> np.ndarray:
        """Exact per-target cost of a choice given as one option index per group."""
        return np.array([math.fsum(row) for row in self.cost[:, pick]])

    def worth(self, pick: np.ndarray) -> float:
        return math.fsum(self.value[pick])


def _round(opts: _Options, x: np.ndarray, budgets: np.ndarray) -> np.ndarray | None:
    """The LP vertex made integral: the best feasible mix of its fractional groups' support options."""
    support = np.flatnonzero(x > 1e-9)
    pick = np.empty(opts.groups, dtype=np.int64)
    pick[opts.group[support]] = support  # a whole group's option (a fractional group's last, for now)
    counts = np.bincount(opts.group[support], minlength=opts.groups)
    fractional = np.flatnonzero(counts > 1)
    if fractional.size:
        choices = [support[opts.group[support] == g] for g in fractional]
        if math.prod(len(c) for c in choices) > MAX_ROUNDINGS:
            return None
        combos = np.stack([m.ravel() for m in np.meshgrid(*choices, indexing="ij")], axis=1)  # (m, F)
        fixed = np.setdiff1d(np.arange(opts.groups), fractional)
        left = budgets - opts.cost[:, pick[fixed]].sum(1)
        fits = (opts.cost[:, combos].sum(2) <= left[:, None]).all(0)
        if not fits.any():
            return None
        best = np.flatnonzero(fits)[np.argmax(opts.value[combos[fits]].sum(1))]
        pick[fractional] = combos[best]
    return _upgrade(opts, pick, budgets)


def _upgrade(opts: _Options, pick: np.ndarray, budgets: np.ndarray) -> np.ndarray | None:
    """Take the most valuable single-group change that every budget allows, until none is left."""
    if (opts.totals(pick) > budgets).any():
        return None
    return _exchange(opts, pick, budgets, np.arange(len(opts.value)), pairs=False)


def _exchange(
    opts: _Options, pick: np.ndarray, budgets: np.ndarray, candidates: np.ndarray, pairs: bool = True
) -> np.ndarray:
    """Take the most valuable change among ``candidates`` of one group's option, or (``pairs``) of two
    groups' options together, that every budget allows, until none is left: two-group changes trade
    one target's slack for another's, which no single upgrade can. Each round is vectorised over the
    candidates (and their pairs, held in memory: a few candidates only)."""
    group = opts.group[candidates]
    while True:
        slack = budgets - opts.totals(pick)
        now = pick[group]
        gain = opts.value[candidates] - opts.value[now]
        extra = opts.cost[:, candidates] - opts.cost[:, now]  # (T, C)
        single = np.where((extra <= slack[:, None]).all(0), gain, -np.inf)
        s = int(np.argmax(single))
        trial, best = pick.copy(), single[s]
        trial[group[s]] = candidates[s]
        if pairs:
            fits = (extra[:, :, None] + extra[:, None, :] <= slack[:, None, None]).all(0)
            fits &= group[:, None] < group[None, :]  # each pair of groups once
            pair = np.where(fits, gain[:, None] + gain[None, :], -np.inf)
            i, j = np.unravel_index(int(np.argmax(pair)), pair.shape)
            if pair[i, j] > best:
                trial, best = pick.copy(), pair[i, j]
                trial[group[i]], trial[group[j]] = candidates[i], candidates[j]
        if not best > 0 or (opts.totals(trial) > budgets).any():  # fits only up to rounding: stop here
            return pick
        pick = trial


def _undominated(cost: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Indices of states no other state beats (no dearer on any target, worth at least as much)."""
    order = np.lexsort((cost.sum(1), -value))
    c = cost[order]
    n = len(order)
    keep = np.ones(n, dtype=bool)
    for s in range(0, n, 256):  # each state against every state before it in value order
        e = min(n, s + 256)
        beats = (c[None, :e] <= c[s:e, None]).all(2) & (np.arange(e)[None, :] < np.arange(s, e)[:, None])
        keep[s:e] = ~beats.any(1)
    return np.sort(order[keep])


def _multipliers(lam: np.ndarray) -> np.ndarray:
    """The LP's multipliers and variations of them, one row each: every row bounds every partial
    choice (weak duality), and one that prices a target higher bounds tighter the choices that spend
    much of that target, which the LP's own prices let through."""
    scale = max(float(lam.max()), 1e-12)
    rows = [lam] + [lam + s * scale * np.eye(len(lam))[t] for t in range(len(lam)) for s in (0.25, 1.0)]
    return np.array(rows + [lam * (1 - 0.5 * np.eye(len(lam))[t]) for t in range(len(lam))])


def _search(
    opts: _Options, d: np.ndarray, lam: np.ndarray, bound: float, budgets: np.ndarray, delta: float, beam: int | None
) -> np.ndarray | None:
    """The best choice among those worth more than ``bound - delta`` (``bound``: the LP's, priced by
    ``lam``; exact when ``beam`` is None); None if none survives. Raises OverflowError past MAX_STATES."""
    targets = len(budgets)
    candidates = [np.flatnonzero((opts.group == g) & (d < delta)) for g in range(opts.groups)]
    cmin = np.array([opts.cost[:, c].min(1) for c in candidates])
    cmax = np.array([opts.cost[:, c].max(1) for c in candidates])
    prices = _multipliers(lam)  # (J, T)
    # per group and multiplier row, the best priced value among the group's candidates
    best_priced = np.array([(opts.value[c][None] - prices @ opts.cost[:, c]).max(1) for c in candidates])  # (G, J)
    rest_min, rest_max, rest_best = cmin.sum(0), cmax.sum(0), best_priced.sum(0)
    cost, value, loss = np.zeros((1, targets)), np.zeros(1), np.zeros(1)
    trail: list[tuple[np.ndarray, np.ndarray]] = []
    order = np.argsort([len(c) for c in candidates], kind="stable")  # forced groups first
    for g in order:
        o = candidates[g]
        rest_min, rest_max, rest_best = rest_min - cmin[g], rest_max - cmax[g], rest_best - best_priced[g]
        new_cost = (cost[:, None, :] + opts.cost[:, o].T[None]).reshape(-1, targets)
        new_value = (value[:, None] + opts.value[o][None]).ravel()
        new_loss = (loss[:, None] + d[o][None]).ravel()
        unusable = np.maximum(budgets - new_cost - rest_max, 0.0)  # slack no completion can fill
        alive = np.flatnonzero((new_loss + unusable @ lam < delta) & (new_cost + rest_min <= budgets).all(1))
        if alive.size and beam is None:  # the other multipliers' bounds (the first row's is the loss)
            left = budgets - new_cost[alive]
            bounds = new_value[alive, None] + rest_best[None, 1:] + (left - unusable[alive]) @ prices[1:].T
            alive = alive[bounds.min(1) > bound - delta]
        if beam is not None and alive.size > beam:
            alive = alive[np.argpartition(new_loss[alive] + unusable[alive] @ lam, beam)[:beam]]
        elif alive.size > MAX_STATES:
            raise OverflowError(f"{alive.size} states")
        elif alive.size > 1:
            alive = alive[_undominated(new_cost[alive], new_value[alive])]
        if alive.size == 0:
            return None
        trail.append((alive // len(o), o[alive % len(o)]))
        cost, value, loss = new_cost[alive], new_value[alive], new_loss[alive]
    state = int(np.argmax(value))
    pick = np.empty(opts.groups, dtype=np.int64)
    for g, (parent, option) in zip(order[::-1], trail[::-1], strict=True):
        pick[g] = option[state]
        state = int(parent[state])
    return pick


def milp_choice(
    vals: list[np.ndarray], cost: list[np.ndarray], budgets: np.ndarray, options: list[np.ndarray], gap: float = 1e-9
) -> np.ndarray | None:
    """HiGHS's MILP, one binary per allowed option: k per group with every budget met exactly (or None).

    ``gap``: HiGHS stops once its bound proves the choice within this fraction of the optimum.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_array, vstack

    opts = _Options(vals, cost, options)
    n, targets = len(opts.value), len(budgets)
    one_per_group = coo_array((np.ones(n), (opts.group, np.arange(n))), shape=(opts.groups, n))
    rows = vstack([one_per_group, coo_array(opts.cost)]).tocsr()
    tighten = np.zeros(targets)
    for _ in range(5):  # HiGHS meets rows within its feasibility tolerance: tighten until exact
        res = milp(
            -opts.value,
            constraints=[
                LinearConstraint(rows, np.concatenate([np.ones(opts.groups), np.full(targets, -np.inf)]),
                                 np.concatenate([np.ones(opts.groups), budgets - tighten])),
            ],
            integrality=np.ones(n),
            bounds=Bounds(0, 1),
            options={"mip_rel_gap": gap},
        )  # fmt: skip
        if res.x is None:
            return None
        chosen = np.flatnonzero(res.x > 0.5)
        pick = np.empty(opts.groups, dtype=np.int64)
        pick[opts.group[chosen]] = chosen
        over = opts.totals(pick) - budgets
        if (over <= 0).all():
            return opts.k[pick]
        tighten += np.maximum(over, 0) * 2 + 1e-12 * np.abs(budgets)
    return None


def solve_several(
    vals: list[np.ndarray], cost: list[np.ndarray], budgets: np.ndarray, options: list[np.ndarray], rtol: float
) -> np.ndarray | None:
    """k per group within ``rtol`` of the optimum with every budget met exactly; None if no choice
    fits. ``cost[g]`` is (T, n_g+1); ``options[g]`` the options group g may take."""
    opts = _Options(vals, cost, options)
    try:
        relaxed = opts.lp(budgets)
    except OverflowError as stopped:
        log.info("%s; HiGHS's MILP takes over", stopped)
        return milp_choice(vals, cost, budgets, options, gap=rtol)
    if relaxed is None:
        return None
    bound, lam, x = relaxed
    d = opts.reduced_costs(lam)
    pick = _round(opts, x, budgets)

    def improve(delta: float, beam: int | None) -> None:
        nonlocal pick
        found = _search(opts, d, lam, bound, budgets, delta, beam)
        if found is not None and (opts.totals(found) <= budgets).all():
            if pick is None or opts.worth(found) > opts.worth(pick):
                pick = found

    def lacking() -> float:
        """How far the bound is from proving the incumbent within rtol."""
        if pick is None:
            return math.inf
        best = opts.worth(pick)
        return bound - best - rtol * abs(best)

    try:
        if pick is None:  # the rounding found nothing that fits (rare): an exhaustive search decides
            improve(math.inf, None)
            if pick is None:
                return None
        if BEAM and lacking() > 0:  # a dive for a better incumbent
            improve(bound - opts.worth(pick), BEAM)
        if lacking() > 0:  # then exchanges among the options of a choice that would prove itself
            proving = bound - opts.worth(pick) if rtol == 0 else rtol * abs(bound) / (1 + rtol)
            usable = np.flatnonzero(d < min(proving, bound - opts.worth(pick)))
            pick = _exchange(opts, pick, budgets, usable[np.argsort(d[usable], kind="stable")[:MAX_EXCHANGE]])
        # Exact searches over a widening loss: each proves every choice it did not see worth at most
        # bound - delta, so the first whose delta reaches what the incumbent lacks ends it. Narrow ones
        # are cheap and usually find the optimum, which shrinks what is lacking.
        delta = min(rtol * abs(bound) or math.inf, lacking()) / 8
        while lacking() > 0:
            need = lacking()
            improve(min(delta, need), None)
            if delta >= need:
                break
            delta *= 2
    except OverflowError as too_many:
        # A choice worth more than the incumbent by rtol prices every option below what it lacks
        # (reduced-cost fixing): HiGHS needs only those, usually a handful per group.
        need = lacking()
        allowed = [opts.k[(opts.group == g) & (d < need)] for g in range(opts.groups)]
        log.info("several-target search too wide (%s); HiGHS's MILP takes over on %d of %d options",
                 too_many, sum(map(len, allowed)), len(opts.k))  # fmt: skip
        found = milp_choice(vals, cost, budgets, allowed, gap=rtol)
        if found is not None and (pick is None or _worth(vals, found) > opts.worth(pick)):
            return found
    return None if pick is None else opts.k[pick]


def _worth(vals: list[np.ndarray], keep: np.ndarray) -> float:
    return math.fsum(float(v[k]) for v, k in zip(vals, keep, strict=True))
