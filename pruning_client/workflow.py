"""The remote pruning workflow behind ``halp profile``, ``halp prune`` and ``halp demo``.

One run: load data and model, analyse it, connect to every target service,
calibrate each target's latency model on measured whole-model latency, prune
with fine-tuning (jointly for all targets, or once per target), measure the
result on every target and write the report.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pruning_client.cache import TableCache
from pruning_client.calibration import probe_keeps
from pruning_client.data import Loaders, load_data
from pruning_client.export import export_onnx
from pruning_client.graph import ModelGraph, analyse
from pruning_client.latency import LatencyModel, LatencyTables
from pruning_client.layers import GraphError
from pruning_client.models.registry import ModelError, build_model, load_weights
from pruning_client.prunability import hold_unprunable
from pruning_client.pruner import HALPPruner, PruneStep
from pruning_client.remote import ProfilerClient, RemoteTarget
from pruning_client.repair import repair_to_measured_budget, side_by_side
from pruning_client.report import TargetReport, staircase, target_reports, write_report
from pruning_client.saliency import magnitude_saliency
from pruning_client.schedule import block_sizes
from pruning_client.targets import Target, parallel
from pruning_client.thinning import pruned_copy
from pruning_client.train import evaluate, free_cores, train_with_progress
from pruning_client.ui import UI, SilentUI


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
    fixed: list[str] = field(default_factory=list)  # modules whose output channels are never pruned


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

    def fit_threads(self, busy_before: float) -> None:
        """Train on the cores other work leaves free (``busy_before``: the load average before this run)."""
        threads = free_cores(busy_before)
        if threads != torch.get_num_threads():
            self.ui.stage(f"training on {threads} CPU thread(s): the others are busy (load {busy_before:.1f})")
            torch.set_num_threads(threads)

    def pretrain(self, model: nn.Module, data: Loaders) -> None:
        """Train from scratch when no weights were given (8 epochs on the digits by default)."""
        if not self.s.weights:
            epochs = self.s.pretrain_epochs if self.s.pretrain_epochs is not None else 8
            self._train(model, data, epochs, 0.05, "training the unpruned model")

    def _train(self, model: nn.Module, data: Loaders, epochs: float, lr: float, what: str, pruner=None) -> None:
        train_with_progress(model, data.train, epochs, lr, self.ui, what, pruner)

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

    def calibrate(self, targets: list[Target], model: nn.Module, graph: ModelGraph, example, deploy) -> bytes:
        """Fit a, b per target on the unpruned model and copies thinned to 3/4 and 1/2; the unpruned ONNX."""
        keeps = probe_keeps(graph.sizes, self.block_sizes(graph))
        unpruned = self.export(model, deploy)
        thinned = [self.export(pruned_copy(model, example, graph.first_channels(k)), deploy) for k in keeps[1:]]
        probes = list(zip(keeps, [unpruned, *thinned], strict=True))
        notes = parallel(lambda t: t.calibrate(probes, _input_shape(deploy)), targets)
        for t, note in zip(targets, notes, strict=True):
            if note:
                self.ui.stage(f"{t.profiler.url}: {note}")
            cal = t.latency.calibration
            errors = ", ".join(f"{100 * r:+.1f}" for r in cal.residuals)
            self.ui.stage(
                f"{t.profiler.url}: {t.before.median_ms:.3f} ms measured; fit a={cal.a:.3f} b={cal.b:.4f} "
                f"(leave-one-out errors {errors} %)"
            )
        return unpruned

    def analyse(self, model: nn.Module, example: torch.Tensor) -> ModelGraph:
        """The graph to prune: ``--fixed`` modules held out, groups that break when pruned held."""
        names = dict(model.named_modules())
        unknown = [n for n in self.s.fixed if n not in names]
        if unknown:
            raise GraphError(f"--fixed: no module named {', '.join(unknown)} in {self.s.model}")
        fixed = [names[n] for n in self.s.fixed]
        graph = analyse(model.eval(), example, self.s.batch, self.s.dtype, ignored_layers=fixed)  # type: ignore[arg-type]
        hold_unprunable(graph, example)
        return graph

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
        graph = self.analyse(model, example)
        self.ui.stage(f"{len(graph.groups)} channel groups over {len(graph.layers)} conv/linear layers")
        for root, reason in graph.held.items():
            self.ui.stage(f"held (keeps all its channels): the group of {root}: {reason}")
        if (share := graph.unmodelled_weight_share) > 0.01:
            self.ui.stage(f"{100 * share:.0f} % of the weights are outside the conv/linear calls the tables time")
        targets = [Target(r, LatencyModel(graph, LatencyTables.of(r))) for r in remotes]
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
                "target": t.profiler.url,
                "fingerprint": t.profiler.fingerprint,
                "points_measured": t.profiler.measured_points,
                "points_cached": t.profiler.cached_points,
                "seconds": elapsed,
            }
            for t in targets
        ]

    # --- halp prune ----------------------------------------------------------------------------
    def prune(self) -> list[TargetReport]:
        start, busy = time.perf_counter(), os.getloadavg()[0]  # read before this run loads the machine itself
        data, model = self.load()
        try:
            graph, targets, example, deploy = self.setup(model, data.input_size)
            self.fit_threads(busy)
            self.pretrain(model, data)
            accuracy_before = evaluate(model, data.val)
            self.ui.stage(f"unpruned accuracy {accuracy_before:.2f} %")
            unpruned = self.calibrate(targets, model, graph, example, deploy)
            groups = [[t] for t in targets] if self.s.per_target else [targets]
            reports = []
            for i, group in enumerate(groups):
                work = copy.deepcopy(model) if len(groups) > 1 else model
                out = self.s.out / f"target{i}" if len(groups) > 1 else self.s.out
                work_graph = graph if work is model else self.analyse(work, example)
                reports += self._prune_for(
                    group, work, work_graph, data, out, start, accuracy_before=accuracy_before,
                    unpruned_onnx=unpruned, example=example, deploy=deploy,
                )  # fmt: skip
                self.outputs.append(out)
            return reports
        finally:
            self.close()

    def _prune_for(
        self, targets, model, graph, data, out: Path, start: float, *,
        accuracy_before: float, unpruned_onnx: bytes, example: torch.Tensor, deploy: torch.Tensor,
    ) -> list[TargetReport]:  # fmt: skip
        """Prune ``model`` for ``targets`` jointly, fine-tune it, measure it and write its report to ``out``."""
        shape = _input_shape(deploy)
        for t in targets:  # a per-target copy has its own graph; the latency model follows it
            if t.latency.graph is not graph:
                t.latency = LatencyModel(graph, t.latency.tables, t.latency.calibration)
        channels_before = {lc.name: (lc.cin, lc.cout) for lc in graph.layers}
        iterations = max(1, round(self.s.prune_epochs * len(data.train)))
        measured_steps: list[list[float]] = []

        def after_step(record: PruneStep) -> None:
            self.ui.stage(record.describe(self.s.steps))
            if self.s.measure_steps:
                thin = self.export(pruner.thinned_copy(), deploy)
                measured_steps.append(
                    [r.median_ms for r in parallel(lambda t: t.profiler.measure(thin, shape), targets)]
                )
                for t, ms in zip(targets, measured_steps[-1], strict=True):
                    if refit := t.refit_if_drifted(pruner.keep_counts(), ms):
                        self.ui.stage(f"{t.profiler.url}: {refit}")

        pruner = HALPPruner(
            model, example, [t.latency for t in targets], self.s.latency_ratio, self.s.steps,
            max(1, iterations // self.s.steps), self.block_sizes(graph), on_step=after_step,
        )  # fmt: skip
        self._train(model, data, self.s.prune_epochs, self.s.lr, "pruning with fine-tuning", pruner)
        while not pruner.done:  # a short epoch can end before the schedule
            pruner.prune_now()
        repair_to_measured_budget(
            pruner, targets, unpruned_onnx, lambda: self.export(pruner.thinned_copy(), deploy),
            self.s.latency_ratio, shape, self.ui.stage,
        )  # fmt: skip
        pruned = pruner.finalize()
        self._train(pruned, data, self.s.epochs, self.s.lr, "fine-tuning the pruned model")
        pruned_onnx = self.export(pruned, deploy)
        final = side_by_side(targets, unpruned_onnx, pruned_onnx, shape)
        final_graph = analyse(pruned.eval(), example, batch=self.s.batch, dtype=self.s.dtype)  # type: ignore[arg-type]
        accuracy = (accuracy_before, evaluate(pruned, data.val))
        reports = target_reports(targets, final, pruner.keep_counts(), pruner.target_ms, accuracy)
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
            staircase=staircase(targets[0].latency, final_graph, channels_before),
            seconds=time.perf_counter() - start,
            graph={"held": graph.held, "unmodelled_weight_share": graph.unmodelled_weight_share},
        )
        return reports
