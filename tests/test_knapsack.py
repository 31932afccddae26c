"""``solve`` against scipy's MILP (HiGHS) on random staircase instances; ``solve_paper`` on hand-checked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pruning_client.knapsack import MULTI_TARGET_GAP, Infeasible, solve, solve_milp, solve_paper


def staircase_instance(rng, groups: int, n_max: int, targets: int = 1, negative: bool = False):
    values, costs = [], []
    for _ in range(groups):
        n = int(rng.integers(1, n_max + 1))
        saliency = np.sort(rng.lognormal(0, 1, n))[::-1]
        values.append(np.concatenate(([0.0], np.cumsum(saliency))))
        k = np.arange(n + 1)
        rows = []
        for _ in range(targets):
            step = int(rng.choice([1, 4, 8, 16]))
            c = rng.uniform(0.5, 2) * np.ceil(k / step) * step / n_max + rng.normal(0, 0.02, n + 1)  # dips
            rows.append(c - rng.uniform(0, 0.5) if negative else c)
        costs.append(np.array(rows) if targets > 1 else rows[0])
    return values, costs


def milp_optimum(values, costs, budget) -> float | None:
    """Reference: the full one-binary-per-option MILP, solved by HiGHS."""
    try:
        keep = solve_milp(values, costs, budget)
    except Infeasible:
        return None
    return sum(float(v[k]) for v, k in zip(values, keep, strict=True))


def exact_totals(costs, keep) -> list[float]:
    rows = [np.atleast_2d(c) for c in costs]
    return [math.fsum(float(r[t, k]) for r, k in zip(rows, keep, strict=True)) for t in range(rows[0].shape[0])]


def random_budget(rng, costs):
    rows = [np.atleast_2d(c) for c in costs]
    lo = sum(r.min(1) for r in rows)
    hi = sum(r.max(1) for r in rows)
    budget = lo + rng.uniform(0, 1, len(lo)) * (hi - lo)
    return float(budget[0]) if len(budget) == 1 else budget


@pytest.mark.parametrize("targets", [1, 2, 3])
def test_solve_matches_milp_and_meets_budgets_exactly(targets):
    rng = np.random.default_rng(targets)
    for trial in range(60 if targets == 1 else 25):
        values, costs = staircase_instance(rng, int(rng.integers(1, 9)), 40, targets, negative=trial % 3 == 0)
        budget = random_budget(rng, costs)
        optimum = milp_optimum(values, costs, budget)
        if optimum is None:
            with pytest.raises(Infeasible):
                solve(values, costs, budget)
            continue
        keep = solve(values, costs, budget)
        assert all(t <= b for t, b in zip(exact_totals(costs, keep), np.atleast_1d(budget), strict=True))
        got = sum(float(v[k]) for v, k in zip(values, keep, strict=True))
        gap = 1e-6 if targets == 1 else MULTI_TARGET_GAP  # one target: exact; several: within 0.1 %
        assert got >= optimum * (1 - gap) - 1e-9, (trial, got, optimum)


def test_budget_equal_to_an_achievable_total_is_met_and_used():
    rng = np.random.default_rng(7)
    values, costs = staircase_instance(rng, 6, 30)
    target = np.array([len(v) // 2 for v in values])
    budget = exact_totals(costs, target)[0]
    keep = solve(values, costs, budget)
    assert exact_totals(costs, keep)[0] <= budget
    assert sum(v[k] for v, k in zip(values, keep, strict=True)) >= sum(
        v[k] for v, k in zip(values, target, strict=True)
    )


def test_integer_costs_are_solved_exactly():
    rng = np.random.default_rng(3)
    for _ in range(20):
        values, costs = staircase_instance(rng, 5, 25)
        costs = [np.round(c * 10) for c in costs]
        budget = float(np.round(random_budget(rng, costs)))
        optimum = milp_optimum(values, costs, budget)
        if optimum is not None:
            keep = solve(values, costs, budget)
            assert sum(v[k] for v, k in zip(values, keep, strict=True)) == pytest.approx(optimum, rel=1e-12)


def test_min_keep_is_respected_and_infeasible_budgets_raise():
    values = [np.array([0.0, 1.0, 1.5, 1.7]), np.array([0.0, 2.0, 2.1])]
    costs = [np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.0, 1.0, 2.0])]
    assert solve(values, costs, 2.0).tolist() == [1, 1]
    assert solve(values, costs, 2.0, min_keep=[2, 0]).tolist() == [2, 0]
    with pytest.raises(Infeasible, match="no choice fits"):
        solve(values, costs, 2.5, min_keep=[3, 1])
    with pytest.raises(ValueError):
        solve(values, [np.zeros(2), np.zeros(3)], 1.0)
    with pytest.raises(Infeasible):
        solve([np.array([0.0, 1.0])] * 2, [np.ones((2, 2))] * 2, [5.0, 1.0])  # second target impossible


def test_resnet50_sized_instance_matches_milp():
    """26,560 one-channel options over the 53 conv layers of ResNet-50, staircase costs."""
    rng = np.random.default_rng(11)
    sizes = [64] + [64, 64, 256, 256] + [64, 64, 256] * 2 + [128, 128, 512, 512] + [128, 128, 512] * 3
    sizes += [256, 256, 1024, 1024] + [256, 256, 1024] * 5 + [512, 512, 2048, 2048] + [512, 512, 2048] * 2
    values, costs = [], []
    for n in sizes:
        values.append(np.concatenate(([0.0], np.cumsum(np.sort(rng.lognormal(0, 1, n))[::-1]))))
        step = int(rng.choice([8, 16, 32]))
        costs.append(rng.uniform(0.5, 2) * np.ceil(np.arange(n + 1) / step) * step / 1300 + rng.normal(0, 0.003, n + 1))
    budget = 0.5 * sum(float(c.max()) for c in costs)
    keep = solve(values, costs, budget)
    assert exact_totals(costs, keep)[0] <= budget
    assert sum(v[k] for v, k in zip(values, keep, strict=True)) == pytest.approx(
        milp_optimum(values, costs, budget), rel=1e-9
    )


# --- the paper's solver, on cases checked by hand --------------------------------------------


def test_paper_solver_picks_the_best_prefixes():
    # blocks worth 5, 3 | 4, 2 at one unit of latency each; two units: one block from each group (9)
    values = [np.array([0.0, 5.0, 8.0]), np.array([0.0, 4.0, 6.0])]
    costs = [np.array([0.0, 0.001, 0.002])] * 2
    assert solve_paper(values, costs, 0.002).tolist() == [1, 1]
    assert solve_paper(values, costs, 0.003).tolist() == [2, 1]
    assert solve_paper(values, costs, 0.004).tolist() == [2, 2]  # everything fits: all kept


def test_paper_solver_keeps_importance_order_and_misses_this_optimum():
    # Group 0: block 1 (value 1, 2 units) must come before block 2 (value 10, 1 unit); group 1: 3 for 1 unit.
    values = [np.array([0.0, 1.0, 11.0]), np.array([0.0, 3.0])]
    costs = [np.array([0.0, 0.002, 0.003]), np.array([0.0, 0.001])]
    assert solve_paper(values, costs, 0.002).tolist() == [0, 1]
    assert solve(values, costs, 0.002).tolist() == [0, 1]
    # 3 units: the optimum keeps group 0 whole (11). The paper's DP, items taken group 1 first, finds
    # block 0/1 not taken at 2 units (1 + 0 < 3), so block 0/2 cannot follow it at 3 units: it stops at 1 + 3.
    assert solve_paper(values, costs, 0.003).tolist() == [1, 1]
    assert solve(values, costs, 0.003).tolist() == [2, 0]


def test_paper_solver_rounding_can_break_the_budget():
    # each block costs 0.4 us, rounded to 0 units at latency x 1000: everything looks free
    values = [np.array([0.0, 1.0, 2.0])]
    costs = [np.array([0.0, 0.0004, 0.0008])]
    assert solve_paper(values, costs, 0.0005).tolist() == [2]  # 0.0008 > 0.0005: over budget
    assert solve(values, costs, 0.0005).tolist() == [1]


def test_paper_no_layer_collapse_option_can_break_the_budget():
    values = [np.array([0.0, 1.0]), np.array([0.0, 2.0])]
    costs = [np.array([0.0, 0.003]), np.array([0.0, 0.003])]
    assert solve_paper(values, costs, 0.003).tolist() == [0, 1]
    assert solve_paper(values, costs, 0.003, disable_layer_prune=True).tolist() == [1, 1]  # 0.006 > 0.003


def test_several_targets_on_a_large_instance_are_solved_within_the_gap():
    rng = np.random.default_rng(5)
    sizes = [64, 256, 128, 512, 256, 1024, 512, 2048] * 4
    values, costs = [], []
    for n in sizes:
        values.append(np.concatenate(([0.0], np.cumsum(np.sort(rng.lognormal(0, 1, n // 8))[::-1]))))
        k = np.arange(n // 8 + 1)
        costs.append(
            np.stack([rng.uniform(0.5, 2) * np.ceil(k / s) * s for s in (2, 4, 1)]) + rng.normal(0, 0.2, (3, len(k)))
        )
    budgets = 0.5 * np.sum([c.max(1) for c in costs], axis=0)
    keep = solve(values, costs, budgets)
    assert all(t <= b for t, b in zip(exact_totals(costs, keep), budgets, strict=True))
    optimum = milp_optimum(values, costs, budgets)
    assert sum(float(v[k]) for v, k in zip(values, keep, strict=True)) >= optimum * (1 - MULTI_TARGET_GAP)
