"""The remote pruning workflow behind ``halp profile``, ``halp prune`` and ``halp demo``.

One run: load data and model, analyse it, connect to every target service,
calibrate each target's latency model on measured whole-model latency, prune
with fine-tuning (jointly for all targets, or once per target), measure the
result on every target and write the report.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import torch
from torch import nn

from pruning_client.cache import TableCache
from pruning_client.data import Loaders, load_data
from pruning_client.export import export_onnx
from pruning_client.graph import ModelGraph, analyse, pruned_copy
from pruning_client.latency import LatencyModel
from pruning_client.models.registry import ModelError, build_model, load_weights
from pruning_client.pruner import HALPPruner, PruneStep, block_sizes
from pruning_client.remote import ProfilerClient, RemoteTarget
from pruning_client.report import TargetReport, write_report
from pruning_client.saliency import magnitude_saliency
from pruning_client.train import TrainConfig, evaluate, train

T = TypeVar("T")
DRIFT = 0.05  # refit a, b when a step's measured latency is this far from the prediction
MAX_REPAIRS = 3
PAIRS = 5  # side-by-side measurements per comparison; one ratio alone spread +-4 % on a 2-core VM
HEADROOM = 0.96  # aim this far under the target, so the final comparison's spread stays under it


class UI(Protocol):
    """What a run reports while it works; the CLI draws it with rich."""

    def stage(self, text: str) -> None: ...

    def bar(self, key: str, description: str, done: float, total: float | None) -> None: ...

    def done(self, key: str) -> None: ...


class SilentUI:
    def stage(self, text: str) -> None:
        pass

    def bar(self, key: str, description: str, done: float, total: float | None) -> None:
        pass

    def done(self, key: str) -> None:
        pass


@dataclass
class RunSettings:
    targets: list[str]
    model: str = "resnet18"
    weights: Path | None = None
    latency_ratio: float = 0.5
    data: str = "digits"
    input_size: int | None = None
    batch: int = 1
    dtype: str = "fp32"
    steps: int = 10
    epochs: int = 3  # fine-tuning after the last pruning step
    pretrain_epochs: int | None = None  # training from scratch when no weights are given
    prune_epochs: float = 1.0  # training over which the pruning steps are spread
    lr: float = 0.02
    block_size: int | None = None  # None: per-group automatic (multiples of 8, <= 16 choices)
    per_target: bool = False
    out: Path = Path("halp-out")
    token: str | None = None
    seed: int = 0
    measure_steps: bool = True
    cache_dir: Path | None = None


@dataclass
class Target:
    remote: RemoteTarget
    latency: LatencyModel
    samples: list[tuple[np.ndarray, float]] = field(default_factory=list)  # (keep, measured ms)
    before: object = None  # MeasureResult of the unpruned model


def parallel(fn: Callable[[T], object], items: Sequence[T]) -> list:
    """One thread per target: services measure independently, so their waits overlap."""
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(fn, items))


def _input_shape(example: torch.Tensor) -> str:
    return "x".join(map(str, example.shape))


class Run:
    def __init__(self, settings: RunSettings, ui: UI | None = None) -> None:
        if not settings.targets:
            raise ValueError("give at least one --target URL")
        if not 0 < settings.latency_ratio <= 1:
            raise ValueError("--latency-ratio must be in (0, 1]")
        self.s = settings
        self.ui = ui or SilentUI()
        self.clients: list[ProfilerClient] = []
        self.outputs: list[Path] = []  # report directories written by prune(): one, or one per target

    # --- pieces --------------------------------------------------------------------------------
    def load(self) -> tuple[Loaders, nn.Module]:
        torch.manual_seed(self.s.seed)
        data = load_data(self.s.data, self.s.input_size, 64, self.s.seed)
        model = build_model(self.s.model, data.num_classes)
        if self.s.weights:
            model = load_weights(model, self.s.weights)
        elif self.s.pretrain_epochs is None and self.s.data != "digits":
            raise ModelError("give --weights (a trained model) or --pretrain-epochs to train from scratch")
        return data, model

    def pretrain(self, model: nn.Module, data: Loaders) -> None:
        """Train from scratch when no weights were given (8 epochs on the digits by default)."""
        if not self.s.weights:
            epochs = self.s.pretrain_epochs if self.s.pretrain_epochs is not None else 8
            self._train(model, data, epochs, 0.05, "training the unpruned model")

    def _train(self, model: nn.Module, data: Loaders, epochs: float, lr: float, what: str, pruner=None) -> None:
        total = max(1, math.ceil(epochs * len(data.train)))
        self.ui.bar(what, what, 0, total)

        def progress(i: int, _total: int, loss: float) -> None:
            self.ui.bar(what, f"{what} (loss {loss:.3f})", i, total)

        train(model, data.train, TrainConfig(epochs=max(1, math.ceil(epochs)), lr=lr), pruner, progress)
        self.ui.done(what)

    def connect(self) -> list[RemoteTarget]:
        cache = TableCache(self.s.cache_dir) if self.s.cache_dir else TableCache()

        def progress(url: str, done: int, total: int) -> None:
            self.ui.bar(f"tables {url}", f"tables on {url}", done, total)

        targets = []
        for url in self.s.targets:
            client = ProfilerClient(url, token=self.s.token)
            self.clients.append(client)
            targets.append(RemoteTarget(client, cache, progress))
        return targets

    def close(self) -> None:
        for c in self.clients:
            c.close()

    def export(self, model: nn.Module, example: torch.Tensor) -> bytes:
        """ONNX in the deployment dtype: exported once, then sent to every target."""
        return export_onnx(model, example, self.s.dtype)

    def measure(self, target: Target, onnx_bytes: bytes, example: torch.Tensor):
        return target.remote.measure(onnx_bytes, _input_shape(example))

    def side_by_side(self, target: Target, before: bytes, after: bytes, example: torch.Tensor):
        """(before, after) measured alternately, median run of each: the ratio survives slow drift."""
        pairs = [(self.measure(target, before, example), self.measure(target, after, example)) for _ in range(PAIRS)]
        return tuple(sorted(side, key=lambda r: r.median_ms)[PAIRS // 2] for side in zip(*pairs, strict=True))

    def calibrate(self, targets: list[Target], model: nn.Module, graph: ModelGraph, example, deploy) -> None:
        """Fit a, b per target from the unpruned model and a copy thinned to about half its channels."""
        blocks = self.block_sizes(graph)
        half = np.array([min(s, max(b, (s // 2) // b * b)) for s, b in zip(graph.sizes, blocks, strict=True)])
        thin = pruned_copy(model, example, graph.first_channels(half))
        self.unpruned_onnx = self.export(model, deploy)
        thin_onnx = self.export(thin, deploy)

        def fit(t: Target) -> None:
            t.before, thinned = self.side_by_side(t, self.unpruned_onnx, thin_onnx, deploy)
            t.samples = [(graph.sizes.copy(), t.before.median_ms), (half, thinned.median_ms)]
            t.latency.calibrate(t.samples)

        parallel(fit, targets)

    def block_sizes(self, graph: ModelGraph) -> list[int]:
        return block_sizes(graph, self.s.block_size)

    def setup(self, model: nn.Module, size: int) -> tuple[ModelGraph, list[Target], torch.Tensor, torch.Tensor]:
        """Every target contacted and pinned, the graph analysed and the unpruned model's tables measured.

        All of it comes before any training, so an unreachable target or a layer a service refuses
        is reported in seconds, not after the model has trained for minutes.
        """
        remotes = self.connect()
        for r in remotes:
            self.ui.stage(f"target {r.url}: {r.device.backend} on {r.device.accelerator} ({r.fingerprint})")
        with torch.random.fork_rng():  # the run's random stream (init, data order) stays the seed's alone
            example = torch.randn(1, 3, size, size)
            deploy = torch.randn(self.s.batch, 3, size, size)
        graph = analyse(model.eval(), example, batch=self.s.batch, dtype=self.s.dtype)  # type: ignore[arg-type]
        self.ui.stage(f"{len(graph.groups)} channel groups over {len(graph.layers)} conv/linear layers")
        targets = [Target(r, LatencyModel(graph, r.tables())) for r in remotes]
        parallel(lambda t: t.latency.table_sum(graph.sizes), targets)
        return graph, targets, example, deploy

    # --- halp profile --------------------------------------------------------------------------
    def profile(self) -> list[dict]:
        """Rehearse the pruning schedule without data to measure every table point it will need."""
        start = time.perf_counter()
        model = build_model(self.s.model, 1000 if self.s.data != "digits" else 10)
        if self.s.weights:
            model = load_weights(model, self.s.weights)
        size = self.s.input_size or (32 if self.s.data == "digits" else 224)
        try:
            graph, targets, example, deploy = self.setup(model, size)
            # Uncalibrated (a=1, b=0): budgets are fractions of the table sum, so the same tables give
            # the same rehearsal, and a second profile of the same settings measures nothing new.
            rehearsal = HALPPruner(
                model, example, [t.latency for t in targets], self.s.latency_ratio, self.s.steps, 1,
                self.block_sizes(graph),
            )  # fmt: skip
            importance = magnitude_saliency(graph)
            for i in range(self.s.steps):
                self.ui.bar("rehearsal", "rehearsing the pruning schedule", i, self.s.steps)
                rehearsal.prune_now(importance)
            self.ui.done("rehearsal")
        finally:
            self.close()
        elapsed = time.perf_counter() - start
        return [
            {
                "target": t.remote.url,
                "fingerprint": t.remote.fingerprint,
                "points_measured": t.remote.measured_points,
                "points_cached": t.remote.cached_points,
                "seconds": elapsed,
            }
            for t in targets
        ]

    # --- halp prune ----------------------------------------------------------------------------
    def prune(self) -> list[TargetReport]:
        start = time.perf_counter()
        data, model = self.load()
        try:
            graph, targets, example, deploy = self.setup(model, data.input_size)
            self.pretrain(model, data)
            accuracy_before = evaluate(model, data.val)
            self.ui.stage(f"unpruned accuracy {accuracy_before:.2f} %")
            self.calibrate(targets, model, graph, example, deploy)
            for t in targets:
                cal = t.latency.calibration
                self.ui.stage(f"{t.remote.url}: {t.before.median_ms:.3f} ms measured; fit a={cal.a:.3f} b={cal.b:.4f}")
            groups = [[t] for t in targets] if self.s.per_target else [targets]
            reports = []
            for i, group in enumerate(groups):
                work = copy.deepcopy(model) if len(groups) > 1 else model
                out = self.s.out / f"target{i}" if len(groups) > 1 else self.s.out
                work_graph = graph if work is model else analyse(work.eval(), example, self.s.batch, self.s.dtype)  # type: ignore[arg-type]
                reports += self._prune_for(group, work, work_graph, data, accuracy_before, example, deploy, out, start)
                self.outputs.append(out)
            return reports
        finally:
            self.close()

    def _prune_for(self, targets, model, graph, data, accuracy_before, example, deploy, out: Path, start: float):
        for t in targets:  # a per-target copy has its own graph; the latency model follows it
            if t.latency.graph is not graph:
                t.latency = LatencyModel(graph, t.remote.tables(), t.latency.calibration)
        latencies = [t.latency for t in targets]
        channels_before = {lc.name: (lc.cin, lc.cout) for lc in graph.layers}
        iterations = max(1, round(self.s.prune_epochs * len(data.train)))
        pruner = HALPPruner(
            model, example, latencies, self.s.latency_ratio, self.s.steps,
            max(1, iterations // self.s.steps), self.block_sizes(graph),
        )  # fmt: skip
        measured_steps: list[list[float]] = []

        def after_step(record: PruneStep) -> None:
            label = f"step {record.step}/{self.s.steps}" if record.step <= self.s.steps else "repair step"
            self.ui.stage(
                f"{label}: budget "
                + ", ".join(f"{b:.3f}" for b in record.budget_ms)
                + " ms, predicted "
                + ", ".join(f"{p:.3f}" for p in record.predicted_ms)
                + f" ms, saliency kept {100 * record.saliency_kept:.1f} %"
                + ("" if record.met else " (budget out of reach even with the finest blocks: kept the minimum)")
            )
            if self.s.measure_steps:
                thin = self.export(pruner.thinned_copy(), deploy)
                measured_steps.append([r.median_ms for r in parallel(lambda t: self.measure(t, thin, deploy), targets)])
                self._refit(targets, pruner.keep_counts(), measured_steps[-1])

        hook = _StepHook(pruner, after_step)
        self._train(model, data, self.s.prune_epochs, self.s.lr, "pruning with fine-tuning", hook)
        while not pruner.done:  # a short epoch can end before the schedule
            after_step(pruner.prune_now())
        for _ in range(MAX_REPAIRS):
            # The model predicts the budget met; where a target measures more, aim lower by the miss.
            thin = self.export(pruner.thinned_copy(), deploy)
            pairs = parallel(lambda t, m=thin: self.side_by_side(t, self.unpruned_onnx, m, deploy), targets)
            over = [a.median_ms / (b.median_ms * self.s.latency_ratio * HEADROOM) for b, a in pairs]
            if max(over) <= 1.0:
                break
            budgets = [p / max(o, 1.0) for p, o in zip(pruner.predicted_ms(), over, strict=True)]
            self.ui.stage(
                f"measured {max(over):.3f}x the target: repair step to " + ", ".join(f"{b:.3f}" for b in budgets)
            )
            after_step(pruner.prune_now(budgets=budgets))
        pruned = pruner.finalize()
        self._train(pruned, data, self.s.epochs, self.s.lr, "fine-tuning the pruned model")
        accuracy_after = evaluate(pruned, data.val)
        pruned_onnx = self.export(pruned, deploy)
        final = parallel(lambda t: self.side_by_side(t, self.unpruned_onnx, pruned_onnx, deploy), targets)
        keep = pruner.keep_counts()
        final_graph = analyse(pruned.eval(), example, batch=self.s.batch, dtype=self.s.dtype)  # type: ignore[arg-type]
        reports = [
            TargetReport(
                target=t.remote.url,
                fingerprint=t.remote.fingerprint,
                backend=t.remote.device.backend,
                accelerator=t.remote.device.accelerator,
                latency_before_ms=b.median_ms,
                latency_before_p10_ms=b.p10_ms,
                latency_before_p90_ms=b.p90_ms,
                latency_after_ms=a.median_ms,
                latency_after_p10_ms=a.p10_ms,
                latency_after_p90_ms=a.p90_ms,
                predicted_after_ms=t.latency.predict(keep),
                target_ms=target_ms,
                speedup=b.median_ms / a.median_ms,
                accuracy_before=accuracy_before,
                accuracy_after=accuracy_after,
                calibration_a=t.latency.calibration.a,
                calibration_b=t.latency.calibration.b,
                calibration_residuals=t.latency.calibration.residuals,
                points_measured=t.remote.measured_points,
                points_cached=t.remote.cached_points,
            )
            for t, (b, a), target_ms in zip(targets, final, pruner.target_ms, strict=True)
        ]
        write_report(
            out,
            settings=self.s,
            reports=reports,
            history=pruner.history,
            measured_steps=measured_steps,
            channels_before=channels_before,
            channels_after={lc.name: (lc.cin, lc.cout) for lc in final_graph.layers},
            model=pruned,
            onnx_bytes=pruned_onnx,
            staircase=self._staircase(targets[0], final_graph, channels_before),
            seconds=time.perf_counter() - start,
        )
        return reports

    def _refit(self, targets: list[Target], keep: np.ndarray, measured: list[float]) -> None:
        for t, ms in zip(targets, measured, strict=True):
            t.samples.append((keep.copy(), ms))
            if abs(t.latency.predict(keep) - ms) > DRIFT * ms:
                t.latency.calibrate(t.samples)
                cal = t.latency.calibration
                self.ui.stage(f"{t.remote.url}: prediction drifted; refit a={cal.a:.3f} b={cal.b:.4f}")

    def _staircase(self, target: Target, graph: ModelGraph, channels_before: dict[str, tuple[int, int]]):
        """The slowest dense layer's row at its final cin, over cout up to its original count."""
        latency = target.latency.layer_latency(graph.sizes)
        dense = [i for i, lc in enumerate(graph.layers) if lc.shape.op == "conv2d" and lc.shape.groups != 0]
        if not dense:
            return None
        layer = graph.layers[max(dense, key=lambda i: latency[i])]
        original = channels_before[layer.name][1]
        step = max(1, original // 32)
        couts = sorted(set(range(step, original + 1, step)) | {layer.cout})
        target.latency.tables.require({layer.shape.key: {(layer.cin, c) for c in couts}})
        row = target.latency.tables.points[layer.shape.key]
        return {
            "layer": layer.name,
            "shape": layer.shape.key,
            "cin": layer.cin,
            "chosen_cout": layer.cout,
            "points": [[c, row[(layer.cin, c)]] for c in couts],
        }


class _StepHook:
    """Passes ``step()`` to the pruner and reports each pruning step it takes."""

    def __init__(self, pruner: HALPPruner, on_step: Callable[[PruneStep], None]) -> None:
        self.pruner, self.on_step = pruner, on_step

    def step(self) -> None:
        record = self.pruner.step()
        if record is not None:
            self.on_step(record)
