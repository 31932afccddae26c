"""The remote pruning workflow behind ``halp profile``, ``halp prune`` and ``halp demo``.

One run: load data and model, analyse it, connect to every target service,
calibrate each target's latency model on measured whole-model latency, prune
with fine-tuning (jointly for all targets, or once per target), measure the
result on every target and write the report.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn

from pruning_client.cache import TableCache
from pruning_client.calibration import probe_keeps
from pruning_client.checkpoint import LAST, CheckpointError, save_atomic
from pruning_client.data import Feed, Loaders, load_data
from pruning_client.distributed import Context, accuracy, sync_buffers, wrap
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
from pruning_client.train import SCHEDULES, TrainConfig, Trainer, free_cores, run_with_progress
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
    calibrate: bool = True  # fit a, b on measured whole models; False: the tables' sum predicts
    # the training recipe (the paper's: SGD, momentum, weight decay, cosine or step decay, warm-up)
    train_batch: int = 64  # per process: the global batch is this times the number of processes
    interval: int | None = None  # iterations between pruning steps; None: the steps spread over prune_epochs
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup: float = 0.0  # fraction of each training phase over which the learning rate ramps up
    label_smoothing: float = 0.1
    amp: bool = False
    channels_last: bool = False
    workers: int = 0  # DataLoader worker processes per training process

    def recipe(self, epochs: float, lr: float) -> TrainConfig:
        return TrainConfig(
            epochs=epochs, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay,
            label_smoothing=self.label_smoothing, schedule=self.schedule, warmup=self.warmup, amp=self.amp,
            channels_last=self.channels_last,
        )  # fmt: skip


def _input_shape(example: torch.Tensor) -> str:
    return "x".join(map(str, example.shape))


class Run:
    """One pruning run; under torchrun, one per process (``ctx``), rank 0 alone talking to the targets.

    ``resume``: a checkpoint (``checkpoint.load_checkpoint``) to continue from; its settings are the run's.
    """

    def __init__(
        self, settings: RunSettings, ui: UI | None = None, ctx: Context | None = None, resume: dict | None = None
    ) -> None:
        if not settings.targets:
            raise ValueError("give at least one --target URL")
        if not 0 < settings.latency_ratio <= 1:
            raise ValueError("--latency-ratio must be in (0, 1]")
        if settings.interval is not None and settings.interval < 1:
            raise ValueError("--interval must be at least 1 iteration")
        if settings.schedule not in SCHEDULES:
            raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}")
        self.s = settings
        self.ctx = ctx or Context()
        self.ui = ui if ui is not None and self.ctx.main else SilentUI()
        self.saved = resume
        self.clients: list[ProfilerClient] = []
        self.outputs: list[Path] = []  # report directories written by prune(): one, or one per target
        self.training: dict[str, dict] = {}  # per phase: images, seconds, images/s (this process's view)

    # --- pieces --------------------------------------------------------------------------------
    def load(self) -> tuple[Loaders, nn.Module]:
        torch.manual_seed(self.s.seed)
        feed = Feed(self.ctx.world, self.ctx.rank, self.s.workers, pin=self.ctx.device.type == "cuda")
        data = load_data(self.s.data, self.s.input_size, self.s.train_batch, self.s.seed, feed)
        model = build_model(self.s.model, data.num_classes)
        if self.s.weights:
            model = load_weights(model, self.s.weights)
        elif self.s.pretrain_epochs is None and self.s.data != "digits":
            raise ModelError("give --weights (a trained model) or --pretrain-epochs to train from scratch")
        if self.s.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return data, model.to(self.ctx.device)

    def fit_threads(self, busy_before: float) -> None:
        """Train on the cores other work leaves free (``busy_before``: the load average before this run)."""
        threads = free_cores(busy_before)
        if threads != torch.get_num_threads():
            self.ui.stage(f"training on {threads} CPU thread(s): the others are busy (load {busy_before:.1f})")
            torch.set_num_threads(threads)

    def pretrain(self, model: nn.Module, data: Loaders) -> None:
        """Train from scratch when no weights were given (8 epochs on the digits by default)."""
        if self.s.weights:
            return
        epochs = self.s.pretrain_epochs if self.s.pretrain_epochs is not None else 8
        trainer = Trainer(wrap(model, self.ctx), data.train, self.s.recipe(epochs, 0.05))
        if self.saved:  # resuming inside pretraining
            model.load_state_dict(self.saved["model"])
            trainer.load_state_dict(self.saved["trainer"])
        checkpoint = partial(self.checkpoint, phase="pretrain", model=model, trainer=trainer)
        self.timed(trainer, "pretrain", "training the unpruned model", checkpoint)
        sync_buffers(model, self.ctx)

    def timed(self, trainer: Trainer, phase: str, what: str, checkpoint) -> None:
        """Run a training phase with progress bars, and record its throughput (images/s over every rank)."""
        first, start = trainer.iteration, time.perf_counter()
        run_with_progress(trainer, self.ui, what, checkpoint)
        images = (trainer.iteration - first) * self.s.train_batch * self.ctx.world
        seconds = time.perf_counter() - start
        if images:  # a phase of no epochs (--pretrain-epochs 0) trained nothing to count
            self.training[phase] = {"images": images, "seconds": seconds, "images_per_s": images / seconds}

    # --- checkpoints -----------------------------------------------------------------------------
    def checkpoint(self, why: str, *, phase: str, model: nn.Module, trainer: Trainer, **more) -> None:
        """``OUT/checkpoints/last.pt`` after a pruning step or an epoch (rank 0 writes; every rank calls)."""
        if not self.ctx.main:
            return
        state = {
            "settings": dataclasses.asdict(self.s),
            "phase": phase,
            "why": why,
            "world": self.ctx.world,
            "elapsed": time.perf_counter() - self._start,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "trainer": trainer.state_dict(),
            "rng": torch.get_rng_state(),
            "fingerprints": {t.profiler.url: t.profiler.fingerprint for t in self._targets},
            "targets": [t.state_dict() for t in self._targets],
            **self._progress,
            **more,
        }
        save_atomic(state, self.s.out / LAST)

    def check_fingerprints(self, targets: list[Target]) -> None:
        """A resumed run measures on the devices it started on, or not at all."""
        if self.saved is None:
            return
        for t in targets:
            before = self.saved["fingerprints"].get(t.profiler.url)
            if before != t.profiler.fingerprint:
                raise CheckpointError(
                    f"target {t.profiler.url} is another device than when the run started (fingerprint {before} "
                    f"then, {t.profiler.fingerprint} now): its tables and calibration do not apply; start a new run"
                )

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
        unpruned = self.export(model, deploy)
        if not self.s.calibrate:
            self.ui.stage("not calibrated (--no-calibrate): the tables' sum is the predicted latency")
            return unpruned
        keeps = probe_keeps(graph.sizes, self.block_sizes(graph))
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
        is reported in seconds, not after the model has trained for minutes. Only rank 0 talks to
        the targets (the others get an empty list); every rank analyses the same graph.
        """
        remotes = self.ctx.on_main(self.connect) or []
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

        def measured_targets() -> list[Target]:
            targets = [Target(r, LatencyModel(graph, LatencyTables.of(r))) for r in remotes]
            self.check_fingerprints(targets)
            parallel(lambda t: t.latency.table_sum(graph.sizes), targets)
            return targets

        return graph, self.ctx.on_main(measured_targets) or [], example, deploy

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
    def announce(self, data: Loaders) -> None:
        """What the run will do, before it does it."""
        s, per_epoch = self.s, data.train.sampler.batches_per_epoch  # type: ignore[attr-defined]
        interval = self.interval(per_epoch)
        pretrain = 0 if s.weights else (s.pretrain_epochs if s.pretrain_epochs is not None else 8)
        self.ui.stage(
            f"plan: {f'{pretrain} epoch(s) of training from scratch, ' if pretrain else ''}{s.steps} pruning "
            f"step(s), one every {interval} iteration(s) ({s.steps * interval} iterations), then {s.epochs} "
            f"fine-tuning epoch(s); {self.ctx.world} process(es) x batch {s.train_batch} = global batch "
            f"{self.ctx.world * s.train_batch}, {per_epoch} iterations per epoch; {s.schedule} learning rate"
            f"{f' with {s.warmup:g} warm-up' if s.warmup else ''}; targets: {', '.join(s.targets)} at "
            f"{s.latency_ratio:g} x their measured latency"
        )

    def interval(self, per_epoch: int) -> int:
        """Iterations between pruning steps: given, or the steps spread over ``prune_epochs``."""
        return self.s.interval or max(1, round(self.s.prune_epochs * per_epoch) // self.s.steps)

    def prune(self) -> list[TargetReport]:
        """The run; rank 0 returns the reports (one per target), the other ranks an empty list."""
        saved, busy = self.saved, os.getloadavg()[0]  # read before this run loads the machine itself
        self._start = time.perf_counter() - (saved["elapsed"] if saved else 0.0)
        self._targets, self._progress = [], {}
        data, model = self.load()
        try:
            graph, targets, example, deploy = self.setup(model, data.input_size)
            self._targets = targets
            self.fit_threads(busy)
            self.announce(data)
            if saved:
                torch.set_rng_state(saved["rng"])
                self.ui.stage(f"resuming from {self.s.out / LAST}: {saved['phase']}, after a {saved['why']}")
            if saved is None or saved["phase"] == "pretrain":
                self.pretrain(model, data)
                accuracy_before = accuracy(model, data.val, self.ctx)
                unpruned = self.ctx.on_main(lambda: self.calibrate(targets, model, graph, example, deploy))
                self.saved = saved = None  # the resumed part is behind
            else:
                model.load_state_dict(saved["pretrained"])
                accuracy_before = saved["accuracy_before"]
                for t, state in zip(targets, saved["targets"], strict=True):
                    t.load_state_dict(state)
                unpruned = self.ctx.on_main(lambda: self.export(model, deploy))
            self.ui.stage(f"unpruned accuracy {accuracy_before:.2f} %")
            pretrained = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            groups = (
                [[i] for i in range(len(self.s.targets))] if self.s.per_target else [list(range(len(self.s.targets)))]
            )
            reports = []
            for i, group in enumerate(groups):
                out = self.s.out / f"target{i}" if len(groups) > 1 else self.s.out
                self.outputs.append(out)
                if saved and i < saved["group"]:
                    continue  # finished before the run was interrupted: its report is written
                self._progress = {"group": i, "pretrained": pretrained, "accuracy_before": accuracy_before}
                work = copy.deepcopy(model) if len(groups) > 1 else model
                work_graph = graph if work is model else self.analyse(work, example)
                reports += self._prune_for(
                    [targets[j] for j in group] if targets else [], len(group), work, work_graph, data, out,
                    accuracy_before=accuracy_before, unpruned_onnx=unpruned, example=example, deploy=deploy,
                )  # fmt: skip
                self.saved = saved = None
            return reports
        finally:
            self.close()

    def _prune_for(
        self, targets: list[Target], n_targets: int, model: nn.Module, graph: ModelGraph, data: Loaders, out: Path,
        *, accuracy_before: float, unpruned_onnx: bytes | None, example: torch.Tensor, deploy: torch.Tensor,
    ) -> list[TargetReport]:  # fmt: skip
        """Prune ``model`` for ``targets`` jointly, fine-tune it, measure it and write its report to ``out``.

        Rank 0 holds the targets; the other ranks hold latency models without tables (they never
        decide) and follow rank 0's steps.
        """
        ctx, saved, shape = self.ctx, self.saved, _input_shape(deploy)
        models = [LatencyModel(graph, t.latency.tables, t.latency.calibration) for t in targets]
        for t, m in zip(targets, models, strict=True):  # a per-target copy has its own graph
            t.latency = m
        models = models or [LatencyModel(graph, LatencyTables()) for _ in range(n_targets)]
        channels_before = {lc.name: (lc.cin, lc.cout) for lc in graph.layers}
        measured_steps: list[list[float]] = saved["measured_steps"] if saved else []

        def after_step(record: PruneStep) -> None:  # rank 0 only
            self.ui.stage(record.describe(self.s.steps))
            if self.s.measure_steps:
                thin = self.export(pruner.thinned_copy(), deploy)
                measured_steps.append(
                    [r.median_ms for r in parallel(lambda t: t.profiler.measure(thin, shape), targets)]
                )
                for t, ms in zip(targets, measured_steps[-1], strict=True):
                    if refit := t.refit_if_drifted(pruner.keep_counts(), ms):
                        self.ui.stage(f"{t.profiler.url}: {refit}")

        interval = self.interval(data.train.sampler.batches_per_epoch)  # type: ignore[attr-defined]
        pruner = HALPPruner(
            model, example, models, self.s.latency_ratio, self.s.steps, interval, self.block_sizes(graph),
            on_step=after_step, ctx=ctx,
        )  # fmt: skip
        for t, goal, full in zip(targets, pruner.target_ms, pruner.full_ms, strict=False):  # rank 0 has targets
            self.ui.stage(
                f"budget on {t.profiler.url}: {goal:.3f} ms ({self.s.latency_ratio:g} x {full:.3f} ms predicted)"
            )
        finetuning = saved is not None and saved["phase"] == "finetune"
        if saved:
            pruner.load_state_dict(saved["pruner"])
        if not finetuning:
            trainer = Trainer(
                wrap(model, ctx), data.train, self.s.recipe(self.s.prune_epochs, self.s.lr), pruner,
                iterations=self.s.steps * interval,
            )  # fmt: skip
            if saved:
                model.load_state_dict(saved["model"])
                trainer.load_state_dict(saved["trainer"])

            def checkpoint(why: str) -> None:
                self.checkpoint(why, phase="prune", model=model, trainer=trainer, pruner=pruner.state_dict(),
                                measured_steps=measured_steps)  # fmt: skip

            self.timed(trainer, "prune", "pruning with fine-tuning", checkpoint)
            while not pruner.done:  # a schedule longer than the data: the remaining steps now
                pruner.prune_now()
            with pruner.solo():  # rank 0 measures and repairs; the others take its masks after
                ctx.on_main(
                    lambda: repair_to_measured_budget(
                        pruner, targets, unpruned_onnx, lambda: self.export(pruner.thinned_copy(), deploy),
                        self.s.latency_ratio, shape, self.ui.stage,
                    )  # type: ignore[arg-type]
                )  # fmt: skip
            pruner.adopt_main()
        pruned = pruner.finalize()
        trainer = Trainer(wrap(pruned, ctx), data.train, self.s.recipe(self.s.epochs, self.s.lr))
        if finetuning:
            pruned.load_state_dict(saved["model"])  # type: ignore[index]
            trainer.load_state_dict(saved["trainer"])  # type: ignore[index]

        def checkpoint_finetune(why: str) -> None:
            self.checkpoint(why, phase="finetune", model=pruned, trainer=trainer, pruner=pruner.state_dict(),
                            measured_steps=measured_steps)  # fmt: skip

        self.timed(trainer, "finetune", "fine-tuning the pruned model", checkpoint_finetune)
        sync_buffers(pruned, ctx)
        accuracy_after = accuracy(pruned, data.val, ctx)
        reports = ctx.on_main(
            lambda: self._finish(
                targets, pruner, pruned, graph, out, accuracies=(accuracy_before, accuracy_after),
                unpruned_onnx=unpruned_onnx, measured_steps=measured_steps, channels_before=channels_before,
                example=example, deploy=deploy,
            )  # type: ignore[arg-type]
        )  # fmt: skip
        return reports or []

    def _finish(
        self, targets: list[Target], pruner: HALPPruner, pruned: nn.Module, graph: ModelGraph, out: Path, *,
        accuracies: tuple[float, float], unpruned_onnx: bytes, measured_steps: list[list[float]],
        channels_before: dict, example: torch.Tensor, deploy: torch.Tensor,
    ) -> list[TargetReport]:  # fmt: skip
        """Rank 0: the pruned model measured on every target against the unpruned one, and the report."""
        pruned_onnx = self.export(pruned, deploy)
        final = side_by_side(targets, unpruned_onnx, pruned_onnx, _input_shape(deploy))
        final_graph = analyse(pruned.eval(), example, batch=self.s.batch, dtype=self.s.dtype)  # type: ignore[arg-type]
        reports = target_reports(targets, final, pruner.keep_counts(), pruner.target_ms, accuracies)
        write_report(
            out,
            settings=self.s,
            reports=reports,
            history=pruner.history,
            measured_steps=measured_steps,
            channels_before=channels_before,
            channels_after={lc.name: (lc.cin, lc.cout) for lc in final_graph.layers},
            model=pruned.cpu(),
            onnx_bytes=pruned_onnx,
            staircase=staircase(targets[0].latency, final_graph, channels_before),
            seconds=time.perf_counter() - self._start,
            graph={"held": graph.held, "unmodelled_weight_share": graph.unmodelled_weight_share},
            world=self.ctx.world,
            training=self.training,
        )
        return reports
