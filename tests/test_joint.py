"""The joint (cin, cout) solver against brute force and HiGHS on pairwise instances, and the separable
choice it improves on."""

from __future__ import annotations

import numpy as np
import pytest

from pruning_client.joint import Factor, JointProblem, elimination_order, solve_joint, solve_joint_milp
from pruning_client.knapsack import Infeasible, solve


def bottlenecks(rng, blocks: int = 3, options: int = 4) -> JointProblem:
    """A residual group r and per block two inner groups: conv1 (r -> a), conv2 (a -> b), conv3 (b -> r);
    each layer's latency a staircase of cin x cout with noise, values saliency prefixes."""
    groups = 1 + 2 * blocks
    values = [np.cumsum(np.sort(rng.lognormal(0, 1, options))[::-1]) for _ in range(groups)]
    counts = np.arange(1, options + 1)

    def layer() -> np.ndarray:
        base = np.outer(counts, counts) * rng.uniform(0.5, 2) + rng.normal(0, 0.3, (options, options))
        return np.maximum(base, 0.1)

    factors = [Factor((0,), rng.uniform(0.5, 1.5) * counts)]  # the stem, writing r
    for b in range(blocks):
        a, c = 1 + 2 * b, 2 + 2 * b
        factors += [Factor((0, a), layer()), Factor((a, c), layer()), Factor((c, 0), layer())]
    return JointProblem(values, factors, constant=1.0)


def brute_force(problem: JointProblem, budget: float) -> float:
    """Every choice's cost and value at once; the best value within the budget."""
    grid = np.indices(problem.options).reshape(len(problem.options), -1)
    cost = problem.constant + sum(f.table[tuple(grid[g] for g in f.groups)] for f in problem.factors)
    value = sum(v[grid[g]] for g, v in enumerate(problem.values))
    return float(value[cost <= budget].max()) if (cost <= budget).any() else -np.inf


def separable(problem: JointProblem, budget: float) -> np.ndarray:
    """What ``HALPPruner._solve_within`` does: each group credited with the others where they are (all
    options at their largest), solved, and the capacity tightened until the true cost fits; the minimum
    when it never does."""
    now = [n - 1 for n in problem.options]
    costs = []
    for g, n in enumerate(problem.options):
        curve = np.zeros(n)
        for option in range(n):
            choice = list(now)
            choice[g] = option
            curve[option] = sum(
                float(f.table[tuple(choice[h] for h in f.groups)] - f.table[tuple(now[h] for h in f.groups)])
                for f in problem.factors
                if g in f.groups
            )
        costs.append(curve)
    capacity = budget - problem.cost(now)
    for tightening in range(8):
        try:
            keep = solve(problem.values, costs, capacity)
        except Infeasible:
            break
        excess = problem.cost(keep) - budget
        if excess <= 0:
            return keep
        capacity -= excess * (1 + 0.25 * tightening)
    return np.zeros(len(now), dtype=np.int64)


@pytest.mark.parametrize("seed", range(12))
def test_the_joint_solver_finds_the_optimum_of_pairwise_instances(seed):
    rng = np.random.default_rng(seed)
    problem = bottlenecks(rng, blocks=2 + seed % 2, options=3 + seed % 3)
    least = problem.cost([0] * len(problem.options))
    most = problem.cost([n - 1 for n in problem.options])
    budget = least + rng.uniform(0.2, 0.7) * (most - least)
    optimum = brute_force(problem, budget)
    exact = solve_joint(problem, budget, rtol=0.0)
    assert problem.cost(exact) <= budget and problem.value(exact) == pytest.approx(optimum, rel=1e-12)
    reference = solve_joint_milp(problem, budget)
    assert problem.value(reference) == pytest.approx(optimum, rel=1e-6)
    # with the separable choice as incumbent and the production tolerance, within 0.1 % and feasible
    incumbent = separable(problem, budget)
    choice = solve_joint(problem, budget, incumbent=incumbent, rtol=1e-3)
    assert problem.cost(choice) <= budget and problem.value(choice) >= optimum * (1 - 1e-3)
    assert problem.value(choice) >= problem.value(incumbent)


def test_the_separable_choice_can_be_strictly_worse_and_the_joint_one_is_not():
    """Two groups and one layer between them (latency = cin x cout): crediting each group with the other
    held at its full width overstates what pruning both saves, so the tightened separable choice gives
    up more than it must."""
    counts = np.arange(1, 9, dtype=float)
    problem = JointProblem(
        values=[np.sqrt(counts) * 3, np.sqrt(counts) * 2],
        factors=[Factor((0, 1), np.outer(counts, counts)), Factor((0,), 2 * counts), Factor((1,), 2 * counts)],
    )
    budget = 40.0
    optimum = brute_force(problem, budget)
    split = separable(problem, budget)
    joint = solve_joint(problem, budget, incumbent=split, rtol=0.0)
    assert problem.cost(joint) <= budget and problem.value(joint) == pytest.approx(optimum)
    assert problem.value(split) < optimum - 1e-6  # strictly worse


def test_no_fitting_choice_and_a_too_wide_structure_are_none():
    rng = np.random.default_rng(0)
    problem = bottlenecks(rng)
    assert solve_joint(problem, problem.cost([0] * len(problem.options)) - 1e-3) is None
    # every group meeting every other in one layer each: no order keeps the open set small
    dense = JointProblem(
        values=[np.arange(16.0)] * 6,
        factors=[Factor((g, h), np.ones((16, 16))) for g in range(6) for h in range(g + 1, 6)],
    )
    assert elimination_order(dense) is None and solve_joint(dense, 100.0) is None


def test_minimum_options_are_respected():
    rng = np.random.default_rng(3)
    problem = bottlenecks(rng, blocks=2, options=4)
    lo = [1, 2, 0, 1, 3]
    most = problem.cost([n - 1 for n in problem.options])
    choice = solve_joint(problem, most * 0.7, min_option=lo, rtol=0.0)
    reference = solve_joint_milp(problem, most * 0.7, min_option=lo)
    assert all(c >= m for c, m in zip(choice, lo, strict=True))
    assert problem.value(choice) == pytest.approx(problem.value(reference), rel=1e-6)
