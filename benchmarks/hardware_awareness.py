"""SPEC 7.4: at the same latency, HALP vs a FLOPs-proportional knapsack vs a uniform per-layer ratio.

Per seed: ResNet-20 trained on the digits; Taylor saliency over one epoch; three one-shot choices of
blocks of the service's channel tile (8 channels, 16 on AVX-512 CPUs: off-tile counts there measure
slower than wider on-tile ones; the same saliency ranks channels in all three):
  * halp:    knapsack on latency tables measured by the CPU service, to a ratio of the predicted
             latency (--ratio, half by default);
  * flops:   the same knapsack with FLOPs as costs, its FLOPs budget scanned for the choice predicted
             closest to (not over) HALP's predicted latency;
  * uniform: one keep ratio for every group, scanned the same way.
Each pruned copy gets the same fine-tuning; reported: saliency kept, latency measured by the service
(side by side with the unpruned model), test accuracy. Mean and spread over seeds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from common import flops_tables, parse_args, profiler_url, save_plot, write

from pruning_client.cache import TableCache
from pruning_client.data import digits
from pruning_client.export import export_onnx
from pruning_client.graph import analyse
from pruning_client.latency import LatencyModel, LatencyTables
from pruning_client.models import resnet20
from pruning_client.plots import pyplot
from pruning_client.pruner import HALPPruner
from pruning_client.remote import ProfilerClient, RemoteTarget
from pruning_client.saliency import TaylorSaliency
from pruning_client.thinning import pruned_copy
from pruning_client.train import TrainConfig, evaluate, train


def taylor(model, graph, loader) -> list[np.ndarray]:
    saliency = TaylorSaliency(graph)
    criterion = torch.nn.CrossEntropyLoss()
    model.train()
    for x, y in loader:
        model.zero_grad()
        criterion(model(x), y).backward()
        saliency.accumulate()
    model.zero_grad()
    return saliency.averages()


def knapsack_choice(model, x, latency_model, importance, ratio, block) -> np.ndarray:
    # a scan over budgets wants the smallest model where one is out of reach, not a stop
    pruner = HALPPruner(model, x, latency_model, ratio, steps=1, interval=1, block_size=block, allow_minimum=True)
    pruner.prune_now(importance)
    pruner.remove_masks()  # only the choice is wanted here
    return pruner.keep_counts()


def closest_under(fn, target: float, knobs: np.ndarray) -> np.ndarray:
    """The choice fn(knob) -> (keep, predicted) predicted closest to ``target`` without exceeding it.

    A scan rather than a bisection: a knapsack's choice is not monotone in its budget. The
    coarse scan is refined around its best knob so the baselines land as near HALP as they can.
    """
    step = float(knobs[1] - knobs[0])
    scored = [(k, *fn(k)) for k in knobs]
    under = [s for s in scored if s[2] <= target]
    if under:
        best_knob = max(under, key=lambda s: s[2])[0]
        fine = np.linspace(max(best_knob - step, knobs[0]), min(best_knob + step, knobs[-1]), 41)
        scored += [(k, *fn(k)) for k in fine]
        under = [s for s in scored if s[2] <= target]
        return max(under, key=lambda s: s[2])[1]
    return min(scored, key=lambda s: s[2])[1]


def run_seed(seed: int, target: RemoteTarget, epochs: int, finetune: int, ratio: float, quick: bool) -> dict:
    torch.manual_seed(seed)
    data = digits(32, 64, seed=seed)
    model = resnet20(10)
    train(model, data.train, TrainConfig(epochs=epochs, lr=0.1))
    base_accuracy = evaluate(model, data.val)
    x = torch.randn(1, 3, 32, 32)
    graph = analyse(model, x)
    importance = taylor(model, graph, data.train)
    latency = LatencyModel(graph, LatencyTables.of(target))
    shape = "1x3x32x32"
    block = target.device.channel_block

    def measure(m) -> float:
        return target.measure(export_onnx(m, x), shape).median_ms

    half = np.maximum(block, graph.sizes // 2 // block * block)
    thin = pruned_copy(model, x, graph.first_channels(half))
    latency.calibrate([(graph.sizes, measure(model)), (half, measure(thin))])

    halp_keep = knapsack_choice(model, x, latency, importance, ratio, block)
    goal = latency.predict(halp_keep)
    flops = LatencyModel(graph, flops_tables())
    knobs = np.linspace(0.1, 1.0, 7 if quick else 46)  # quick: a coarser search, fewer table points
    flops_keep = closest_under(
        lambda r: (k := knapsack_choice(model, x, flops, importance, r, block), latency.predict(k)), goal, knobs
    )
    uniform_keep = closest_under(
        lambda r: (k := np.maximum(block, np.round(graph.sizes * r / block).astype(int) * block), latency.predict(k)),
        goal, knobs,
    )  # fmt: skip
    total = sum(float(i.sum()) for i in importance)
    unpruned = export_onnx(model, x)
    results = {"seed": seed, "accuracy_unpruned": base_accuracy, "block": block}
    for name, keep in (("halp", halp_keep), ("flops", flops_keep), ("uniform", uniform_keep)):
        top = {
            g.root: np.argsort(-importance[g.id], kind="stable")[:k] for g, k in zip(graph.groups, keep, strict=True)
        }
        pruned = pruned_copy(model, x, top)
        kept = sum(float(importance[g.id][top[g.root]].sum()) for g in graph.groups) / total
        train(pruned, data.train, TrainConfig(epochs=finetune, lr=0.02))
        pairs = [(target.measure(unpruned, shape).median_ms, measure(pruned)) for _ in range(3 if quick else 5)]
        before, after = np.median([p[0] for p in pairs]), np.median([p[1] for p in pairs])
        results[name] = {
            "channels": keep.tolist(),
            "saliency_kept": kept,
            "predicted_ms": latency.predict(keep),
            "measured_ms": float(after),
            "measured_ratio": float(after / before),
            "accuracy": evaluate(pruned, data.val),
        }
        print(f"seed {seed} {name:8s}: saliency kept {kept:.3f}, measured ratio {after / before:.3f}, "
              f"accuracy {results[name]['accuracy']:.2f}")  # fmt: skip
    return results


def main() -> None:
    def options(parser) -> None:
        parser.add_argument("--ratio", type=float, default=0.5, help="HALP's target latency ratio")
        parser.add_argument("--seeds", type=int, default=3, help="seeds (full run)")

    args = parse_args(__doc__, options, target=True)
    seeds, epochs, finetune = ([0], 1, 1) if args.quick else (list(range(args.seeds)), 10, 6)
    name = "hardware_awareness" + ("" if args.ratio == 0.5 else f"-r{args.ratio:g}")
    with tempfile.TemporaryDirectory() as tmp:
        with profiler_url(args, Path(tmp) / "service") as url, ProfilerClient(url) as client:
            target = RemoteTarget(client, TableCache(Path(tmp) / "cache"))
            runs = [run_seed(s, target, epochs, finetune, args.ratio, args.quick) for s in seeds]
    summary = {}
    for method in ("halp", "flops", "uniform"):
        summary[method] = {
            metric: {"mean": float(np.mean([r[method][metric] for r in runs])),
                     "std": float(np.std([r[method][metric] for r in runs]))}
            for metric in ("saliency_kept", "measured_ratio", "accuracy")
        }  # fmt: skip
    write(args.out, name, {"ratio": args.ratio, "runs": runs, "summary": summary}, args.quick)

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method, marker in (("halp", "o"), ("flops", "s"), ("uniform", "^")):
        ax.scatter(
            [r[method]["measured_ratio"] for r in runs],
            [r[method]["accuracy"] for r in runs],
            marker=marker,
            label=method,
        )
    ax.set_xlabel("measured latency / unpruned (CPU service)")
    ax.set_ylabel("test accuracy after fine-tuning (%)")
    ax.set_title("accuracy vs measured latency, one point per seed")
    ax.grid(alpha=0.3)
    ax.legend()
    save_plot(fig, args.out, name, args.quick)


if __name__ == "__main__":
    main()
