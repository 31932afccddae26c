"""SPEC 7.4: HALP against what a user would run instead, at equal measured latency and equal training.

Per seed: ResNet-20 trained on cluttered digits (scikit-learn's digits under affine distortion, with
fragments of other digits, an occluding box and noise: a task the unpruned net does not saturate),
Taylor saliency over one epoch, then one-shot pruning by each arm, each arm's knob searched until its
latency *measured* by the CPU service (paired with the unpruned model, ``targets.paired``) lands:
  * halp:          the latency knapsack on the service's tables, calibrated on paired probes, its
                   budget searched into [0.93 r, r] measured;
  * paper_dp:      the paper's augmented DP (``knapsack.solve_paper``) on the same tables, cout-only
                   costs as the paper's, the same saliency;
  * flops:         the same knapsack with FLOPs as costs;
  * uniform:       one keep ratio for every group;
  * torch_pruning: Torch-Pruning's own pipeline as its README gives it (``MetaPruner`` with
                   ``GroupTaylorImportance``, global pruning), its ``pruning_ratio`` searched;
  * scratch:       the uniform arm's architecture, re-initialised and trained from scratch for the
                   pretraining plus fine-tuning epochs (is pruning worth it at all?).
Every arm but halp is searched to within 2 % of halp's measured ratio. Every pruned model gets the
same fine-tuning. Reported per arm: measured ratio and accuracy, mean and spread over seeds, and
a plot of accuracy against measured latency.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import flops_tables, parse_args, profiler_url, save_plot, write
from hardware_awareness import knapsack_choice, taylor
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pruning_client.cache import TableCache
from pruning_client.calibration import probe_keeps
from pruning_client.data import Loaders, train_loader
from pruning_client.export import export_onnx
from pruning_client.graph import analyse
from pruning_client.knapsack import Infeasible, solve_paper
from pruning_client.landing import AIM, LOW
from pruning_client.latency import LatencyModel, LatencyTables
from pruning_client.models import resnet20
from pruning_client.plots import pyplot
from pruning_client.pruner import HALPPruner
from pruning_client.remote import ProfilerClient, RemoteTarget
from pruning_client.targets import Target, paired
from pruning_client.thinning import pruned_copy
from pruning_client.train import TrainConfig, evaluate, train

ARMS = ("halp", "paper_dp", "flops", "uniform", "torch_pruning", "scratch")
MATCH = 0.02  # every other arm within 2 % of halp's measured ratio


# --- the task ------------------------------------------------------------------------------------
def _boxes(n: int, size: int, low: int, high: int, gen: torch.Generator) -> torch.Tensor:
    """(n, 1, size, size) masks of one random axis-aligned box each, sides in [low, high)."""
    h, w = (torch.randint(low, high, (2, n), generator=gen)).float()
    y0 = torch.rand(n, generator=gen) * (size - h)
    x0 = torch.rand(n, generator=gen) * (size - w)
    yy = torch.arange(size).view(1, size, 1).float()
    xx = torch.arange(size).view(1, 1, size).float()
    rows = (yy >= y0.view(-1, 1, 1)) & (yy < (y0 + h).view(-1, 1, 1))
    cols = (xx >= x0.view(-1, 1, 1)) & (xx < (x0 + w).view(-1, 1, 1))
    return (rows & cols)[:, None].float()


def _affine(n: int, gen: torch.Generator, rotate: float, scale: tuple[float, float], shift: float) -> torch.Tensor:
    angle = (torch.rand(n, generator=gen) * 2 - 1) * rotate
    s = scale[0] + torch.rand(n, generator=gen) * (scale[1] - scale[0])
    shear = (torch.rand(n, generator=gen) * 2 - 1) * 0.3
    t = (torch.rand(n, 2, generator=gen) * 2 - 1) * shift
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    return torch.stack([torch.stack([cos, -sin + shear, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)


def _render(digits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each 32x32 digit canvas distorted, cluttered with two fragments of others, half occluded, noised."""
    n = len(digits)

    def warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, align_corners=False)

    image = warp(digits, _affine(n, gen, rotate=0.6, scale=(0.75, 1.15), shift=0.15))
    for _ in range(2):
        other = digits[torch.randperm(n, generator=gen)]
        piece = warp(other, _affine(n, gen, rotate=3.1, scale=(0.9, 1.4), shift=0.7)) * _boxes(n, 32, 8, 16, gen)
        image = torch.maximum(image, 0.8 * piece)
    occluded = (torch.rand(n, 1, 1, 1, generator=gen) < 0.5).float() * _boxes(n, 32, 6, 12, gen)
    image = image * (1 - occluded) + 0.5 * occluded
    image = image + 0.2 * torch.randn(image.shape, generator=gen)
    return ((image - 0.5) / 0.5).repeat(1, 3, 1, 1)


def cluttered_digits(seed: int, copies: int, batch: int = 64, limit: int | None = None) -> Loaders:
    """``copies`` renderings of every training digit (of the first ``limit``) and two of every validation
    digit, fixed per seed."""
    from sklearn.datasets import load_digits

    data = load_digits()
    small = torch.from_numpy(data.images.astype(np.float32) / 16.0)[:, None]
    canvas = F.pad(F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False), [6] * 4)
    labels = torch.from_numpy(data.target.astype(np.int64))
    order = np.random.default_rng(seed).permutation(len(labels))
    val_idx, train_idx = order[: len(order) // 5], order[len(order) // 5 :][:limit]
    gen = torch.Generator().manual_seed(seed)

    def rendered(idx: np.ndarray, k: int) -> TensorDataset:
        index = torch.from_numpy(np.tile(idx, k))
        return TensorDataset(_render(canvas[index], gen), labels[index])

    train_set = rendered(train_idx, copies)
    return Loaders(train_loader(train_set, batch, seed, None), DataLoader(rendered(val_idx, 2), batch_size=256), 10, 32)


# --- one arm's search to a measured ratio ---------------------------------------------------------
class Measured:
    """Paired ratios of candidates against the unpruned model on one target."""

    def __init__(self, target: RemoteTarget, model: nn.Module, x: torch.Tensor) -> None:
        self.target, self.x, self.unpruned = target, x, export_onnx(model, x)

    def __call__(self, model: nn.Module) -> float:
        shape = "x".join(map(str, self.x.shape))
        return paired(self.target, self.unpruned, [export_onnx(model, self.x)], shape)[0].ratio


def search(build: Callable[[float], nn.Module], measure: Measured, goal: float, tol: float, steps: int):
    """The knob in (0, 1] whose model measures closest to ``goal`` (bisection: measured latency grows
    with every arm's knob, if not strictly); stops within ``tol`` of it. Returns (knob, model, ratio)."""
    lo, hi, best = 0.02, 1.0, None
    knob = goal
    for _ in range(steps):
        model = build(knob)
        ratio = measure(model)
        if best is None or abs(ratio / goal - 1) < abs(best[2] / goal - 1):
            best = (knob, model, ratio)
        if abs(ratio / goal - 1) <= tol:
            break
        lo, hi = (knob, hi) if ratio < goal else (lo, knob)
        knob = (lo + hi) / 2
    return best


def run_seed(
    seed: int,
    target: RemoteTarget,
    ratios: list[float],
    epochs: int,
    finetune: int,
    copies: int,
    limit: int | None,
    steps: int,
    batch: int,
) -> dict[float, dict]:
    """One pretrained model, its saliency and calibration per seed, shared by every ratio's arms."""
    torch.manual_seed(seed)
    data = cluttered_digits(seed, copies, limit=limit)
    model = resnet20(10)
    train(model, data.train, TrainConfig(epochs=epochs, lr=0.1, warmup=0.05))
    base = evaluate(model, data.val)
    print(f"seed {seed}: unpruned accuracy {base:.2f} %")
    x = torch.randn(batch, 3, 32, 32)
    graph = analyse(model, x)
    importance = taylor(model, graph, data.train)
    block = target.device.channel_block
    latency = LatencyModel(graph, LatencyTables.of(target))
    keeps = probe_keeps(graph.sizes, [block] * len(graph.sizes))
    probes = [(k, export_onnx(pruned_copy(model, x, graph.first_channels(k)), x)) for k in keeps]
    Target(target, latency).calibrate(probes, "x".join(map(str, x.shape)))
    measure = Measured(target, model, x)

    def by_saliency(keep: np.ndarray) -> nn.Module:
        top = {
            g.root: np.argsort(-importance[g.id], kind="stable")[:k] for g, k in zip(graph.groups, keep, strict=True)
        }
        return pruned_copy(model, x, top)

    def paper_dp(knob: float) -> nn.Module:
        pruner = HALPPruner(model, x, latency, knob, steps=1, interval=1, block_size=block)
        _, counts, values, _ = pruner._choices(importance)
        # a group keeps one block at least (``disable_layer_prune``): the cost of none is that of one
        costs = latency.cost_curves(graph.sizes, [np.maximum(c, c[1]) for c in counts], out_only=True)
        budget = latency.to_table(knob * latency.predict(graph.sizes)) - latency.table_sum(graph.sizes)
        try:
            k = solve_paper(values, costs, budget, disable_layer_prune=True)
        except Infeasible:  # below its floor: one block per group, as the search's low end wants
            k = np.ones(len(counts), dtype=int)
        return by_saliency(np.array([c[max(j, 1)] for c, j in zip(counts, k, strict=True)]))

    def uniform_keep(knob: float) -> np.ndarray:
        return np.maximum(block, np.round(graph.sizes * knob / block).astype(int) * block)

    def torch_pruning(knob: float) -> nn.Module:
        import torch_pruning as tp

        copy_ = copy.deepcopy(model)
        fc = [m for m in copy_.modules() if isinstance(m, nn.Linear)]
        pruner = tp.pruner.MetaPruner(copy_, x, tp.importance.GroupTaylorImportance(), global_pruning=True,
                                      pruning_ratio=1 - knob, ignored_layers=fc, round_to=block)  # fmt: skip
        copy_.train()
        for i, (images, labels) in enumerate(data.train):  # the gradients GroupTaylorImportance reads
            F.cross_entropy(copy_(images), labels).backward()
            if i == 9:
                break
        pruner.step()
        copy_.zero_grad()
        return copy_

    flops = LatencyModel(graph, flops_tables())
    builders = {
        "halp": lambda k: by_saliency(knapsack_choice(model, x, latency, importance, k, block)),
        "paper_dp": paper_dp,
        "flops": lambda k: by_saliency(knapsack_choice(model, x, flops, importance, k, block)),
        "uniform": lambda k: by_saliency(uniform_keep(k)),
        "torch_pruning": torch_pruning,
    }

    def compare(ratio: float) -> dict:
        """Every arm at one ratio: halp searched into [LOW r, r] measured, the others to halp's measured ratio."""
        results = {"seed": seed, "accuracy_unpruned": base, "block": block}
        knob, halp, goal = search(builders["halp"], measure, AIM * ratio, (1 - LOW) / 2, steps)
        chosen = {"halp": (knob, halp, goal)}
        for name in ARMS[1:-1]:
            chosen[name] = search(builders[name], measure, goal, MATCH, steps)
        scratch = copy.deepcopy(chosen["uniform"][1])
        for m in scratch.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        chosen["scratch"] = (chosen["uniform"][0], scratch, chosen["uniform"][2])
        for name, (knob, pruned, measured) in chosen.items():
            if name == "scratch":
                train(pruned, data.train, TrainConfig(epochs=epochs + finetune, lr=0.1, warmup=0.05))
            else:
                train(pruned, data.train, TrainConfig(epochs=finetune, lr=0.02))
            results[name] = {"knob": knob, "measured_ratio": measured, "accuracy": evaluate(pruned, data.val),
                             "parameters": sum(p.numel() for p in pruned.parameters())}  # fmt: skip
            print(f"seed {seed} r {ratio:g} {name:13s}: knob {knob:.3f}, measured ratio {measured:.3f}, "
                  f"accuracy {results[name]['accuracy']:.2f} %")  # fmt: skip
        return results

    return {r: compare(r) for r in ratios}


def main() -> None:
    def options(parser) -> None:
        parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.3], help="target latency ratios")
        parser.add_argument("--seeds", type=int, default=3, help="seeds (full run)")
        parser.add_argument(
            "--batch",
            type=int,
            default=1,
            help="batch the latency is measured at (at 1, fixed per-layer costs dominate)",
        )

    args = parse_args(__doc__, options, target=True)
    # quick: one seed, one ratio, little training on 256 digits, a short search: the script keeps working (CI)
    ratios = args.ratios[:1] if args.quick else args.ratios
    quick = ([0], 1, 1, 1, 256, 2)
    seeds, epochs, finetune, copies, limit, steps = quick if args.quick else (range(args.seeds), 15, 6, 4, None, 8)
    with tempfile.TemporaryDirectory() as tmp:
        with profiler_url(args, Path(tmp) / "service") as url, ProfilerClient(url) as client:
            target = RemoteTarget(client, TableCache(Path(tmp) / "cache"))
            by_seed = [run_seed(s, target, ratios, epochs, finetune, copies, limit, steps, args.batch) for s in seeds]
    runs = {r: [seed[r] for seed in by_seed] for r in ratios}

    def spread(values: list[float]) -> dict[str, float]:
        return {"mean": float(np.mean(values)), "std": float(np.std(values))}

    # per arm: its measured ratio and accuracy, and halp's accuracy lead over it seed by seed (paired)
    summary = {
        f"{r:g}": {
            arm: {"measured_ratio": spread([x[arm]["measured_ratio"] for x in rs]),
                  "accuracy": spread([x[arm]["accuracy"] for x in rs]),
                  "halp_lead": spread([x["halp"]["accuracy"] - x[arm]["accuracy"] for x in rs])}
            for arm in ARMS
        }
        for r, rs in runs.items()
    }  # fmt: skip
    name = "peers" if args.batch == 1 else f"peers-b{args.batch}"  # one result file per measured batch
    write(
        args.out,
        name,
        {"batch": args.batch, "runs": {f"{r:g}": rs for r, rs in runs.items()}, "summary": summary},
        args.quick,
    )

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for arm, marker in zip(ARMS, "os^vDx", strict=True):
        points = [(x[arm]["measured_ratio"], x[arm]["accuracy"]) for rs in runs.values() for x in rs]
        ax.scatter(*zip(*points, strict=True), marker=marker, label=arm)
    ax.set_xlabel("measured latency / unpruned (CPU service, paired)")
    ax.set_ylabel("validation accuracy after equal training (%)")
    ax.set_title(f"accuracy vs measured latency at batch {args.batch}, one point per seed and ratio")
    ax.grid(alpha=0.3)
    ax.legend()
    save_plot(fig, args.out, name, args.quick)


if __name__ == "__main__":
    main()
