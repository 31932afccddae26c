"""The joint (cin, cout) optimum against the separable choice, on instances from real CPU tables.

Per model (ResNet-50, MobileNetV2, ResNeXt-50 32x4d at 64x64, batch 1, the default blocks) the
ONNX Runtime CPU backend (one thread, in process) times every layer at every (cin, cout) pair its
two groups' block counts make (the full grid the joint problem needs; kept under
``~/.cache/halp/tables/bench-joint`` so a rerun measures nothing). Per seed, channel saliencies are drawn
(lognormal, one per channel: a trained network's are not available here), and per budget (30, 50
and 70 % of the way from the cheapest choice, one block per group, to the unpruned network's table
sum: on a CPU each layer's fixed overhead puts the cheapest choice at about half the sum) five
choices are compared on the true table sum:

  * separable:  ``HALPPruner(joint="off")`` (the separable knapsack, tightened until the true 2-D
                latency fits; the pruner before the joint solver);
  * full:       ``HALPPruner`` as it runs by default (``joint="full"``: the joint optimum over every
                option when it beats the separable choice), with the table points it asked for;
  * near:       ``HALPPruner(joint="near")`` (the joint optimum in a window around the separable
                choice, widened where the optimum reaches its edge), with the table points it asked for;
  * joint:      ``solve_joint`` over every option (0.1 % tolerance), timed;
  * HiGHS:      the linearised pairwise MILP (``solve_joint_milp``, gap 1e-4), timed: the reference.

Reported: the saliency each choice loses against the best of the joint solver's and HiGHS's (median,
worst), the table points the pruner's modes need (each from empty tables), and both solvers' times
side by side.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from common import parse_args, write

from profiler_service.backends import create_backend
from profiler_service.local_target import LocalTarget
from profiler_service.timing import TimingPolicy
from pruning_client.cache import default_cache_dir
from pruning_client.graph import analyse
from pruning_client.joint import solve_joint, solve_joint_milp
from pruning_client.latency import LatencyModel, LatencyTables
from pruning_client.models import MODELS
from pruning_client.pruner import HALPPruner

CACHE = default_cache_dir() / "bench-joint"  # under HALP_CACHE_DIR when set
PLAN = [("resnet50", 64), ("mobilenet_v2", 64), ("resnext50_32x4d", 64)]  # model, input size
BETWEEN = (0.3, 0.5, 0.7)  # budgets this far from the cheapest choice (one block per group) to the whole network


def cached_tables(name: str, target: LocalTarget) -> LatencyTables:
    """Tables that measure on this CPU once and keep every point in a JSON file per model and device."""
    path = CACHE / f"{name}-{target.fingerprint}.json"
    points = {}
    if path.exists():
        points = {k: {(a, b): ms for a, b, ms in rows} for k, rows in json.loads(path.read_text()).items()}

    def fetch(need):
        got = target.fetch(need)
        for key, pts in got.items():
            points.setdefault(key, {}).update(pts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({k: [[a, b, ms] for (a, b), ms in v.items()] for k, v in points.items()}))
        return got

    return LatencyTables(points={k: dict(v) for k, v in points.items()}, fetch=fetch, fingerprint=target.fingerprint)


def pruner(model, graph, latency, example, ratio, joint) -> HALPPruner:
    return HALPPruner(model, example, latency, ratio, steps=1, interval=1, block_size=None, joint=joint)


def pruner_choice(model, graph, latency, example, saliency, ratio, joint) -> tuple[np.ndarray, str]:
    """The step a fresh pruner takes (its masks' hooks removed after)."""
    p = pruner(model, graph, latency, example, ratio, joint)
    record = p.prune_now(saliency)
    p.remove_masks()
    return p.keep_counts(), record.solver


def counting(tables: LatencyTables) -> tuple[LatencyTables, list[int]]:
    """Empty tables that read what they are asked for from ``tables``, and the counts asked."""
    asked: list[int] = []

    def fetch(need):
        asked.append(sum(len(v) for v in need.values()))
        tables.require(need)
        return {k: {p: tables.points[k][p] for p in v} for k, v in need.items()}

    return LatencyTables(fetch=fetch, fingerprint=tables.fingerprint), asked


def as_options(counts: list[np.ndarray], keep: np.ndarray) -> np.ndarray:
    """Channel counts as option indices (the last option of a repeated count: the minimum is clamped)."""
    return np.array([int(np.searchsorted(c, k, side="right")) - 1 for c, k in zip(counts, keep, strict=True)])


def one_model(name: str, size: int, seeds: int, target: LocalTarget) -> dict:
    torch.manual_seed(0)
    model = MODELS[name](1000).eval()
    example = torch.randn(1, 3, size, size)
    graph = analyse(model, example)
    latency = LatencyModel(graph, cached_tables(f"{name}-{size}", target))
    rows = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        saliency = [rng.lognormal(0, 1, g.size) for g in graph.groups]
        # the options and their values exactly as the pruner's first step sees them
        _, counts, values, lo = pruner(model, graph, latency, example, 0.5, "off")._choices(saliency)
        counts = [np.maximum(c, c[m]) for c, m in zip(counts, lo, strict=True)]
        if seed == 0:
            start = time.perf_counter()
            need = latency.factor_points(graph.sizes, counts)
            latency.require(need)
            points = {
                "joint_grid": sum(len(v) for v in need.values()),
                "separable_curves": sum(len(v) for v in latency.curve_points(graph.sizes, counts).values()),
            }
            print(f"{name}: {len(graph.groups)} groups, {points['joint_grid']} table points for the joint problem "
                  f"against {points['separable_curves']} for the separable curves ({target.measured_points} "
                  f"measured now, {time.perf_counter() - start:.0f} s)")  # fmt: skip
        problem = latency.joint_problem(graph.sizes, counts, values)
        full, floor = latency.table_sum(graph.sizes), problem.cost(lo)
        for between in BETWEEN:
            budget = floor + between * (full - floor)
            ratio = budget / full

            separable = as_options(counts, pruner_choice(model, graph, latency, example, saliency, ratio, "off")[0])
            pruned, solver, asked = {}, {}, {}
            for mode in ("full", "near"):  # each from empty tables, to count the points it needs
                fresh, fetched = counting(latency.tables)
                kept, solver[mode] = pruner_choice(
                    model, graph, LatencyModel(graph, fresh), example, saliency, ratio, mode
                )  # fmt: skip
                pruned[mode], asked[mode] = as_options(counts, kept), sum(fetched)
            t = time.perf_counter()
            joint = solve_joint(problem, budget, incumbent=separable, min_option=lo)
            joint_s = time.perf_counter() - t
            t = time.perf_counter()
            highs = solve_joint_milp(problem, budget, min_option=lo, gap=1e-4)
            highs_s = time.perf_counter() - t
            # the optimum: the better of the two (HiGHS only if it meets the budget: it allows 1e-6 over)
            highs_fits = problem.cost(highs) <= budget * (1 + 1e-9)
            best = max(problem.value(joint), problem.value(highs) if highs_fits else -np.inf)
            row = {
                "seed": seed, "between": between, "ratio": ratio, "budget": budget,
                "separable_loss": 1 - problem.value(separable) / best,
                **{f"{m}_loss": 1 - problem.value(pruned[m]) / best for m in pruned},
                **{f"{m}_solver": solver[m] for m in solver}, **{f"{m}_points": asked[m] for m in asked},
                "joint_loss": 1 - problem.value(joint) / best,
                "highs_loss": 1 - problem.value(highs) / best,
                "joint_s": joint_s, "highs_s": highs_s,
                "within_budget": {k: problem.cost(c) <= budget * (1 + 1e-9) for k, c in (
                    ("separable", separable), ("full", pruned["full"]), ("near", pruned["near"]), ("joint", joint),
                )} | {"highs": bool(highs_fits)},
            }  # fmt: skip
            rows.append(row)
            modes = ", ".join(
                f"{m} -{100 * row[f'{m}_loss']:.3f} % ({solver[m]}, {asked[m]} points)" for m in pruned
            )  # fmt: skip
            print(f"  seed {seed} ratio {ratio:.3f}: separable -{100 * row['separable_loss']:.3f} %, {modes}, joint "
                  f"-{100 * row['joint_loss']:.4f} % in {joint_s:.3f} s, HiGHS -{100 * row['highs_loss']:.4f} % in "
                  f"{highs_s:.2f} s")  # fmt: skip
    losses = {k: [r[f"{k}_loss"] for r in rows] for k in ("separable", "full", "near", "joint", "highs")}
    summary = {
        "model": name, "input": size, "groups": len(graph.groups), "instances": len(rows), "table_points": points,
        **{f"{k}_loss_median": float(np.median(v)) for k, v in losses.items()},
        **{f"{k}_loss_worst": float(np.max(v)) for k, v in losses.items()},
        **{f"{m}_points_median": int(np.median([r[f"{m}_points"] for r in rows])) for m in ("full", "near")},
        **{f"{m}_points_worst": int(np.max([r[f"{m}_points"] for r in rows])) for m in ("full", "near")},
        "joint_s_median": float(np.median([r["joint_s"] for r in rows])),
        "joint_s_worst": float(np.max([r["joint_s"] for r in rows])),
        "highs_s_median": float(np.median([r["highs_s"] for r in rows])),
        "speedup_median": float(np.median([r["highs_s"] / r["joint_s"] for r in rows])),
        "all_within_budget": all(r["within_budget"][k] for r in rows for k in ("separable", "full", "near", "joint")),
    }  # fmt: skip
    print({k: round(v, 5) if isinstance(v, float) else v for k, v in summary.items()})
    return {"summary": summary, "instances": rows}


def cpu_target() -> LocalTarget:
    """Plain timing: the instances are about the solvers, and the tables measured so far are kept."""
    backend = create_backend("onnxruntime", threads=1, reference=False)
    return LocalTarget(backend, policy=TimingPolicy(warmup_ms=5, max_ms=100, rel_tol=0.05))


def main() -> None:
    args = parse_args(__doc__)
    target = cpu_target()
    plan = [("resnet20", 32)] if args.quick else PLAN
    body = {"models": {name: one_model(name, size, 1 if args.quick else 3, target) for name, size in plan}}
    write(args.out, "joint", body, args.quick)


if __name__ == "__main__":
    main()
