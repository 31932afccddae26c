"""What every run against profiler services shares, and ``halp profile``.

A run loads data and model, connects to every target service (pinning its fingerprint), analyses
the model and has the tables it needs measured, all before any training, and calibrates each
target's latency model on measured whole models. ``pruning_run.PruneRun`` builds ``halp prune``
on these pieces.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pruning_client.attention import convert_attention
from pruning_client.cache import TableCache
from pruning_client.calibration import kind_probe_keeps, probe_keeps
from pruning_client.checkpoint import CheckpointError
from pruning_client.data import Feed, Loaders
from pruning_client.distributed import Context
from pruning_client.export import export_onnx
from pruning_client.graph import ModelGraph, analyse
from pruning_client.latency import LatencyModel, LatencyTables
from pruning_client.layers import GraphError
from pruning_client.models.registry import ModelError, load_weights
from pruning_client.prunability import hold_unprunable
from pruning_client.pruner import HALPPruner
from pruning_client.remote import ProfilerClient, RemoteTarget
from pruning_client.run_settings import RunSettings
from pruning_client.saliency import magnitude_saliency
from pruning_client.schedule import block_sizes
from pruning_client.targets import Target, max_sets, parallel
from pruning_client.tasks import get_task
from pruning_client.thinning import pruned_copy
from pruning_client.train import SCHEDULES, free_cores
from pruning_client.ui import UI, SilentUI


def input_shape(example: torch.Tensor) -> str:
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
        max_sets()  # a bad HALP_PAIRED_SETS is refused now, not at the calibration after the training
        self.s = settings
        self.task = get_task(settings.task)
        self.loss = self.task.loss(settings.label_smoothing)
        self.ctx = ctx or Context()
        self.ui = ui if ui is not None and self.ctx.main else SilentUI()
        self.saved = resume
        self.clients: list[ProfilerClient] = []
        self.outputs: list[Path] = []  # report directories written by prune(): one, or one per target
        self.training: dict[str, dict] = {}  # per phase: images, seconds, images/s (this process's view)
        self.channel_block = 8  # automatic blocks align to this: every target's kernels' channel tile

    # --- pieces --------------------------------------------------------------------------------
    def load(self) -> tuple[Loaders, nn.Module]:
        torch.manual_seed(self.s.seed)
        feed = Feed(self.ctx.world, self.ctx.rank, self.s.workers, pin=self.ctx.device.type == "cuda")
        data = self.task.load(self.s.data, self.s.input_size, self.s.train_batch, self.s.seed, feed)
        model = self.task.build(self.s.model, data.num_classes)
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
        """Fit each target's latency model on the unpruned network, copies thinned to 3/4 and 1/2, and
        (where kinds of layer get slopes of their own) copies thinning one kind's groups; the unpruned ONNX."""
        unpruned = self.export(model, deploy)
        if not self.s.calibrate:
            self.ui.stage("not calibrated (--no-calibrate): the tables' sum is the predicted latency")
            return unpruned
        blocks = self.block_sizes(graph)
        keeps = probe_keeps(graph.sizes, blocks)
        for t in targets:  # each target's fitted kinds (its tables decide which have time enough)
            extra = kind_probe_keeps(graph.sizes, blocks, t.latency.kind_shares())
            keeps += [k for k in extra if not any(np.array_equal(k, seen) for seen in keeps)]
        thinned = [self.export(pruned_copy(model, example, graph.first_channels(k)), deploy) for k in keeps[1:]]
        probes = list(zip(keeps, [unpruned, *thinned], strict=True))
        notes = parallel(lambda t: t.calibrate(probes, input_shape(deploy)), targets)
        for t, note in zip(targets, notes, strict=True):
            if note:
                self.ui.stage(f"{t.profiler.url}: {note}")
            cal = t.latency.calibration
            errors = ", ".join(f"{100 * r:+.1f}" for r in cal.residuals)
            self.ui.stage(
                f"{t.profiler.url}: {t.before.median_ms:.3f} ms measured; {cal.describe()} "
                + (f"(leave-one-out errors {errors} %)" if errors else "(not fitted)")
            )
        return unpruned

    def analyse(self, model: nn.Module, example: torch.Tensor) -> ModelGraph:
        """The graph to prune: ``--fixed`` modules held out, groups that break when pruned held.

        Attention whose heads cannot go as it is (``nn.MultiheadAttention``, torchvision's Swin and MaxViT
        attention) is replaced in place, before any training, by the same function with prunable heads
        (``attention.convert_attention``), whose projections the tables time.
        """
        if converted := convert_attention(model):
            self.ui.stage(
                f"attention at {', '.join(converted)} runs with prunable heads (the same outputs; its "
                "projections are timed linear layers and whole heads can be pruned)"
            )
        names = dict(model.named_modules())
        unknown = [n for n in self.s.fixed if n not in names]
        if unknown:
            raise GraphError(f"--fixed: no module named {', '.join(unknown)} in {self.s.model}")
        fixed = [names[n] for n in self.s.fixed]
        graph = analyse(model.eval(), example, self.s.batch, self.s.dtype, ignored_layers=fixed)  # type: ignore[arg-type]
        hold_unprunable(graph, example)
        return graph

    def block_sizes(self, graph: ModelGraph) -> list[int]:
        return block_sizes(graph, self.s.block_size, align=self.channel_block)

    def setup(self, model: nn.Module, size: int) -> tuple[ModelGraph, list[Target], torch.Tensor, torch.Tensor]:
        """Every target contacted and pinned, the graph analysed and the unpruned model's tables measured.

        ``model`` is what runs on the device: the task's network (a detector's backbone and heads).

        All of it comes before any training, so an unreachable target or a layer a service refuses
        is reported in seconds, not after the model has trained for minutes. Only rank 0 talks to
        the targets (the others get an empty list); every rank analyses the same graph.
        """
        remotes = self.ctx.on_main(self.connect) or []
        for r in remotes:
            self.ui.stage(f"target {r.url}: {r.device.backend} on {r.device.accelerator} ({r.fingerprint})")
        self.channel_block = self.ctx.from_main(lambda: math.lcm(8, *(r.device.channel_block for r in remotes)))
        if self.s.block_size is None and self.channel_block != 8:
            self.ui.stage(f"automatic blocks in multiples of {self.channel_block} channels (the targets' kernel tile)")
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
        model = self.task.build(self.s.model, self.task.classes(self.s.data))
        if self.s.weights:
            model = load_weights(model, self.s.weights)
        size = self.s.input_size or self.task.input_size(self.s.data)
        model = self.task.network(model)
        try:
            graph, targets, example, deploy = self.setup(model, size)
            # Uncalibrated (a=1, b=0): budgets are fractions of the table sum, so the same tables give
            # the same rehearsal, and a second profile of the same settings measures nothing new.
            rehearsal = HALPPruner(
                model, example, [t.latency for t in targets], self.s.latency_ratio, self.s.steps, 1,
                self.block_sizes(graph), joint=self.s.joint,
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
