"""``halp prune``: train, prune on schedule with fine-tuning, repair, fine-tune, measure, report.

The run is data-parallel under torchrun (``distributed.Context``): every rank trains, rank 0 alone
talks to the targets and decides, and its outcome is broadcast. A checkpoint after every pruning step
and epoch (``checkpoint``) lets ``--resume`` continue at the iteration the run had reached.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pruning_client.checkpoint import LAST, save_atomic
from pruning_client.data import Loaders
from pruning_client.distributed import sync_buffers, wrap
from pruning_client.graph import ModelGraph, analyse
from pruning_client.landing import land_on_budget, side_by_side
from pruning_client.latency import LatencyModel, LatencyTables
from pruning_client.pruner import HALPPruner, PruneStep
from pruning_client.report import TargetReport, quality_warnings, staircases, target_reports, write_report
from pruning_client.targets import Target, parallel
from pruning_client.train import Trainer, run_with_progress
from pruning_client.workflow import Run, input_shape


class PruneRun(Run):
    """One ``halp prune`` (per process under torchrun); ``prune()`` runs it."""

    def pretrain_epochs(self) -> int:
        """Training from scratch when no weights were given: the task's default on the digits."""
        if self.s.weights:
            return 0
        return self.s.pretrain_epochs if self.s.pretrain_epochs is not None else self.task.pretrain[0]

    def pretrain(self, model: nn.Module, data: Loaders) -> None:
        if not (epochs := self.pretrain_epochs()):
            return
        _, lr, least_warmup = self.task.pretrain
        recipe = dataclasses.replace(self.s.recipe(epochs, lr), warmup=max(self.s.warmup, least_warmup))
        trainer = Trainer(wrap(model, self.ctx), data.train, recipe, loss=self.loss)
        if self.saved:  # resuming inside pretraining
            model.load_state_dict(self.saved["model"])
            trainer.load_state_dict(self.saved["trainer"], self.saved["world"] / self.ctx.world)
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
            "settings": {**dataclasses.asdict(self.s), "token": None},  # a secret: given again on resume
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

    # --- halp prune ----------------------------------------------------------------------------
    def announce(self, data: Loaders) -> None:
        """What the run will do, before it does it."""
        s, per_epoch = self.s, data.train.sampler.batches_per_epoch  # type: ignore[attr-defined]
        interval = self.interval(per_epoch)
        pretrain = self.pretrain_epochs()
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
            graph, targets, example, deploy = self.setup(self.task.network(model), data.input_size)
            self._targets = targets
            self.fit_threads(busy)
            self.announce(data)
            if saved:
                torch.set_rng_state(saved["rng"])
                self.ui.stage(f"resuming from {self.s.out / LAST}: {saved['phase']}, after {saved['why']}")
            if saved is None or saved["phase"] == "pretrain":
                self.pretrain(model, data)
                quality_before = self.task.evaluate(model, data.val, self.ctx)
                net = self.task.network(model)
                unpruned = self.ctx.on_main(lambda: self.calibrate(targets, net, graph, example, deploy))
                self.saved = saved = None  # the resumed part is behind
            else:
                model.load_state_dict(saved["pretrained"])
                quality_before = saved["quality_before"]
                for t, state in zip(targets, saved["targets"], strict=True):
                    t.load_state_dict(state)
                unpruned = self.ctx.on_main(lambda: self.export(self.task.network(model), deploy))
            self.ui.stage(f"unpruned: {self.task.describe(quality_before)}")
            pretrained = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            # a copy of the unpruned model for what the report compares beyond the metrics (detections)
            self._unpruned = copy.deepcopy(model).cpu() if self.ctx.main and self.task.compares_outputs else None
            groups = (
                [[i] for i in range(len(self.s.targets))] if self.s.per_target else [list(range(len(self.s.targets)))]
            )
            reports = []
            for i, group in enumerate(groups):
                out = self.s.out / f"target{i}" if len(groups) > 1 else self.s.out
                self.outputs.append(out)
                if saved and i < saved["group"]:
                    continue  # finished before the run was interrupted: its report is written
                self._progress = {"group": i, "pretrained": pretrained, "quality_before": quality_before}
                work = copy.deepcopy(model) if len(groups) > 1 else model
                work_graph = graph if work is model else self.analyse(self.task.network(work), example)
                reports += self._prune_for(
                    [targets[j] for j in group] if targets else [], len(group), work, work_graph, data, out,
                    quality_before=quality_before, unpruned_onnx=unpruned, example=example, deploy=deploy,
                )  # fmt: skip
                self.saved = saved = None
            return reports
        finally:
            self.close()

    def _prune_for(
        self, targets: list[Target], n_targets: int, model: nn.Module, graph: ModelGraph, data: Loaders, out: Path,
        *, quality_before: dict[str, float], unpruned_onnx: bytes | None, example: torch.Tensor,
        deploy: torch.Tensor,
    ) -> list[TargetReport]:  # fmt: skip
        """Prune ``model`` (its task's network) for ``targets`` jointly, fine-tune it, measure it and write
        its report to ``out``.

        Rank 0 holds the targets; the other ranks hold latency models without tables (they never
        decide) and follow rank 0's steps.
        """
        ctx, saved, shape = self.ctx, self.saved, input_shape(deploy)
        models = [LatencyModel(graph, t.latency.tables, t.latency.calibration) for t in targets]
        for t, m in zip(targets, models, strict=True):  # a per-target copy has its own graph
            t.latency = m
        models = models or [LatencyModel(graph, LatencyTables()) for _ in range(n_targets)]
        channels_before = {lc.name: (lc.cin, lc.cout) for lc in graph.layers}
        measured_steps: list[list[float]] = saved["measured_steps"] if saved else []
        landing: list[dict] = saved.get("landing", []) if saved else []

        def measure_now(masks: list[np.ndarray] | None = None) -> list[float]:
            """Rank 0: the current model (or ``masks``' one) against the unpruned one on every target."""
            thin, keep = self.export(pruner.thinned_copy(masks), deploy), pruner.keep_counts(masks)
            pairs = parallel(lambda t: t.measure_against(unpruned_onnx, thin, shape), targets)
            for t, pair in zip(targets, pairs, strict=True):
                self.ui.stage(f"{t.profiler.url}: {t.learn(keep, pair)}")
            return [p.ratio * t.before.median_ms for t, p in zip(targets, pairs, strict=True)]  # type: ignore[union-attr]

        def after_step(record: PruneStep) -> None:  # rank 0 only
            self.ui.stage(record.describe(self.s.steps))
            if self.s.measure_steps and record.step <= self.s.steps:  # landing rounds measure their own steps
                measured_steps.append(measure_now())

        def recheck(smallest: list[np.ndarray]) -> None:
            """Rank 0: a budget that looks out of reach is believed only once the smallest model the blocks
            allow is measured: the line's far end, where an intercept fitted on noise misleads most."""
            self.ui.stage("the budget looks out of reach: measuring the smallest model the blocks allow, in pairs")
            measure_now(smallest)

        interval = self.interval(data.train.sampler.batches_per_epoch)  # type: ignore[attr-defined]
        pruner = HALPPruner(
            self.task.network(model), example, models, self.s.latency_ratio, self.s.steps, interval,
            self.block_sizes(graph), on_step=after_step, ctx=ctx, joint=self.s.joint,
            allow_minimum=self.s.allow_minimum, recheck=recheck if targets else None,
            names=[t.profiler.url for t in targets] or None,
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
                iterations=self.s.steps * interval, loss=self.loss,
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
            with pruner.solo():  # rank 0 measures, repairs and gives back; the others take its masks after
                landing = ctx.on_main(
                    lambda: land_on_budget(
                        pruner, targets, unpruned_onnx, lambda: self.export(pruner.thinned_copy(), deploy),
                        self.s.latency_ratio, shape, self.ui.stage,
                    )  # type: ignore[arg-type]
                ) or []  # fmt: skip
            pruner.adopt_main()
        pruner.finalize()  # in place: ``model`` (a detector around its network too) is the pruned one
        pruned = model
        trainer = Trainer(wrap(pruned, ctx), data.train, self.s.recipe(self.s.epochs, self.s.lr), loss=self.loss)
        if finetuning:
            pruned.load_state_dict(saved["model"])  # type: ignore[index]
            trainer.load_state_dict(saved["trainer"], saved["world"] / ctx.world)  # type: ignore[index]

        def checkpoint_finetune(why: str) -> None:
            self.checkpoint(why, phase="finetune", model=pruned, trainer=trainer, pruner=pruner.state_dict(),
                            measured_steps=measured_steps, landing=landing)  # fmt: skip

        self.timed(trainer, "finetune", "fine-tuning the pruned model", checkpoint_finetune)
        sync_buffers(pruned, ctx)
        quality_after = self.task.evaluate(pruned, data.val, ctx)
        reports = ctx.on_main(
            lambda: self._finish(
                targets, pruner, pruned, graph, out, quality=(quality_before, quality_after), val=data.val,
                unpruned_onnx=unpruned_onnx, measured_steps=measured_steps, channels_before=channels_before,
                example=example, deploy=deploy, landing=landing,
            )  # type: ignore[arg-type]
        )  # fmt: skip
        return reports or []

    def _finish(
        self, targets: list[Target], pruner: HALPPruner, pruned: nn.Module, graph: ModelGraph, out: Path, *,
        quality: tuple[dict, dict], val, unpruned_onnx: bytes, measured_steps: list[list[float]],
        channels_before: dict, example: torch.Tensor, deploy: torch.Tensor, landing: list[dict],
    ) -> list[TargetReport]:  # fmt: skip
        """Rank 0: the pruned model measured on every target against the unpruned one, and the report."""
        network = self.task.network(pruned)
        pruned_onnx = self.export(network, deploy)
        final = side_by_side(targets, unpruned_onnx, pruned_onnx, input_shape(deploy))
        final_graph = analyse(network.eval(), example, batch=self.s.batch, dtype=self.s.dtype)  # type: ignore[arg-type]
        reports = target_reports(targets, final, pruner.keep_counts(), pruner.target_ms, quality)
        write_report(
            out,
            settings=self.s,
            reports=reports,
            history=pruner.history,
            measured_steps=measured_steps,
            landing=landing,
            warnings=quality_warnings(quality, self.s.max_drop),
            channels_before=channels_before,
            channels_after={lc.name: (lc.cin, lc.cout) for lc in final_graph.layers},
            model=pruned.cpu(),
            onnx_bytes=pruned_onnx,
            staircases=staircases(targets[0].latency, final_graph, channels_before),
            seconds=time.perf_counter() - self._start,
            graph={"held": graph.held, "unmodelled_weight_share": graph.unmodelled_weight_share},
            world=self.ctx.world,
            training=self.training,
            task=self.task.compare(self._unpruned, pruned, val, deploy, out),
        )
        return reports
