"""The several-targets solver against brute force on small instances, each step of it exercised."""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import pytest

import pruning_client.multi_knapsack as mk


def small_instance(rng, groups: int, options: int, targets: int):
    """Values rising with k, costs per target rising with noise (so each target ranks options differently)."""
    vals, cost = [], []
    for _ in range(groups):
        vals.append(np.concatenate(([0.0], np.cumsum(rng.lognormal(0, 1, options - 1)))))
        steps = rng.uniform(0.2, 2.0, (targets, options - 1)) * rng.uniform(0.5, 2.0, (targets, 1))
        cost.append(np.concatenate([np.zeros((targets, 1)), np.cumsum(steps, 1)], 1) + rng.normal(0, 0.1, (targets, 1)))
    total = sum(c.max(1) for c in cost)
    budgets = sum(c.min(1) for c in cost) + rng.uniform(0.3, 0.7, targets) * (total - sum(c.min(1) for c in cost))
    return vals, cost, budgets


def brute_force(vals, cost, budgets) -> float | None:
    best = None
    for keep in itertools.product(*[range(len(v)) for v in vals]):
        totals = [math.fsum(c[t, k] for c, k in zip(cost, keep, strict=True)) for t in range(len(budgets))]
        if all(t <= b for t, b in zip(totals, budgets, strict=True)):
            value = math.fsum(v[k] for v, k in zip(vals, keep, strict=True))
            best = value if best is None else max(best, value)
    return best


def worth(vals, keep) -> float:
    return math.fsum(float(v[k]) for v, k in zip(vals, keep, strict=True))


def all_options(vals) -> list[np.ndarray]:
    return [np.arange(len(v)) for v in vals]


@pytest.mark.parametrize("targets", [2, 3])
def test_exact_search_finds_the_brute_force_optimum(targets):
    """rtol=0: the LP-priced search (bounds, dominance) must reach the optimum wherever rounding does not."""
    rng = np.random.default_rng(targets)
    searched = 0
    for _ in range(40):
        vals, cost, budgets = small_instance(rng, 5, 5, targets)
        optimum = brute_force(vals, cost, budgets)
        keep = mk.solve_several(vals, cost, budgets, all_options(vals), rtol=0.0)
        if optimum is None:
            assert keep is None
            continue
        totals = [math.fsum(c[t, k] for c, k in zip(cost, keep, strict=True)) for t in range(targets)]
        assert all(t <= b for t, b in zip(totals, budgets, strict=True))
        assert worth(vals, keep) == pytest.approx(optimum, rel=1e-12)
        opts = mk._Options(vals, cost, all_options(vals))
        _, _, x = opts.lp(budgets)
        rounded = mk._round(opts, x, budgets)
        searched += rounded is None or opts.worth(rounded) < optimum - 1e-9
    assert searched >= 5  # the search, not the rounding, found these


def test_tolerance_is_kept_and_pareto_options_suffice():
    rng = np.random.default_rng(7)
    for _ in range(30):
        vals, cost, budgets = small_instance(rng, 6, 4, 2)
        optimum = brute_force(vals, cost, budgets)
        if optimum is None:
            continue
        options = [mk.pareto_options(c, v, 0) for c, v in zip(cost, vals, strict=True)]
        keep = mk.solve_several(vals, cost, budgets, options, rtol=1e-3)
        assert worth(vals, keep) >= optimum / (1 + 1e-3) - 1e-12


def test_min_keep_options_are_respected():
    rng = np.random.default_rng(3)
    vals, cost, budgets = small_instance(rng, 4, 6, 2)
    options = [np.arange(2, 6)] * 4
    keep = mk.solve_several(vals, cost, budgets + 100, options, rtol=0.0)
    assert (keep == 5).all()  # a generous budget keeps everything
    keep = mk.solve_several(vals, cost, sum(c[:, 2] for c in cost) + 1e-9, options, rtol=0.0)
    assert keep is not None and (keep >= 2).all()


def test_a_search_too_wide_hands_over_to_highs(monkeypatch, caplog):
    rng = np.random.default_rng(11)
    monkeypatch.setattr(mk, "MAX_STATES", 0)
    monkeypatch.setattr(mk, "BEAM", None)  # no dive either: the exact search must start
    for _ in range(20):
        vals, cost, budgets = small_instance(rng, 5, 5, 2)
        optimum = brute_force(vals, cost, budgets)
        with caplog.at_level(logging.INFO, logger=mk.__name__):
            keep = mk.solve_several(vals, cost, budgets, all_options(vals), rtol=0.0)
        if optimum is not None:
            assert worth(vals, keep) == pytest.approx(optimum, rel=1e-9)
    handed = [r.args for r in caplog.records if "HiGHS's MILP takes over" in r.msg]
    assert handed and any(allowed < total for _, allowed, total in handed)  # reduced-cost fixing cut options


def test_exchange_trades_one_targets_slack_for_anothers_where_no_single_upgrade_fits():
    """Group A's upgrade needs target 0's cost, which is spent; moving B to an option cheaper on target 0
    and dearer on target 1 (where slack is left) makes room: worth 7 against 5, every budget held."""
    vals = [np.array([0.0, 3.0]), np.array([5.0, 4.0])]
    cost = [np.array([[0.0, 1.0], [0.0, 0.0]]), np.array([[1.0, 0.0], [0.0, 2.0]])]
    budgets = np.array([1.0, 5.0])
    opts = mk._Options(vals, cost, all_options(vals))
    start = np.array([0, 2])  # A's option 0, B's option 0 (flattened indices)
    assert (mk._upgrade(opts, start, budgets) == start).all()
    assert mk._exchange(opts, start, budgets, np.arange(4)).tolist() == [1, 3]


def test_infeasible_budgets_give_none():
    vals = [np.array([0.0, 1.0])] * 2
    cost = [np.array([[1.0, 2.0], [1.0, 2.0]])] * 2
    assert mk.solve_several(vals, cost, np.array([1.5, 10.0]), all_options(vals), rtol=1e-3) is None
    assert mk.milp_choice(vals, cost, np.array([1.5, 10.0]), all_options(vals)) is None


def test_undominated_keeps_exactly_the_pareto_states():
    rng = np.random.default_rng(0)
    cost, value = rng.integers(0, 5, (300, 3)).astype(float), rng.integers(0, 5, 300).astype(float)
    kept = set(mk._undominated(cost, value).tolist())
    for i in range(300):
        beaten = [
            j for j in range(300)
            if j != i and (cost[j] <= cost[i]).all() and value[j] >= value[i]
            and ((cost[j] < cost[i]).any() or value[j] > value[i] or j < i)
        ]  # fmt: skip
        assert (i in kept) == (not beaten), i
