"""Data-parallel runs under ``torchrun`` (DDP) on many GPUs or CPU processes: the process group, the
collectives a pruning run needs (rank-0 work and its outcome, agreement checks), and ``halp finetune``.

``torchrun --nproc-per-node N -m pruning_client.cli prune|finetune ...`` runs on N devices; without
torchrun's environment the same command runs as one process. Each rank trains on its own shard of the
data, DDP averages the gradients, evaluation counts are summed over the ranks, and only rank 0 writes
files.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from pruning_client.data import Loaders
from pruning_client.train import TrainConfig, Trainer, count_correct

T = TypeVar("T")
COLLECTIVE_TIMEOUT_MIN = float(os.environ.get("HALP_COLLECTIVE_TIMEOUT_MIN", "60"))


class StoppedByMain(RuntimeError):
    """Rank 0 failed in work only it does (a target, the solver); every other rank stops with this."""


@dataclass(frozen=True)
class Context:
    """This process's place in the run: rank, world size, device; and the few collectives a run needs.

    Work only rank 0 does (the profiler services, the knapsack, files) runs through ``on_main`` or
    ``from_main``: its outcome, success or failure, is broadcast, so a target that fails mid-run stops
    every rank with rank 0's message instead of leaving them waiting in the next collective.
    """

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def _outcome(self, fn: Callable[[], T], share: bool) -> T | None:
        result: T | None = None
        error: BaseException | None = None
        if self.main:
            try:
                result = fn()
            except Exception as e:  # every rank must hear of it before anyone raises
                error = e
        if self.world == 1:
            if error is not None:
                raise error
            return result
        payload = [(result if share else None, None if error is None else f"{type(error).__name__}: {error}")]
        dist.broadcast_object_list(payload, src=0)
        if error is not None:
            raise error
        value, message = payload[0]
        if message is not None:
            raise StoppedByMain(f"rank 0 stopped the run: {message}")
        return result if self.main else value

    def on_main(self, fn: Callable[[], T]) -> T | None:
        """``fn()`` on rank 0 only; its result there, None on the others; its failure everywhere."""
        return self._outcome(fn, share=False)

    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0, its (picklable) result on every rank; its failure everywhere."""
        return self._outcome(fn, share=True)  # type: ignore[return-value]

    def agree(self, what: str, digest: str) -> None:
        """Every rank holds the same ``digest`` of ``what``; a rank that differs is an error, never silent."""
        if self.world == 1:
            return
        digests: list[str | None] = [None] * self.world
        dist.all_gather_object(digests, digest)
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        if differ:
            raise RuntimeError(f"ranks {differ} hold different {what} than rank 0: the replicas diverged")


def digest(*arrays) -> str:
    """A short checksum of arrays (masks, saliency) for ``Context.agree``."""
    h = hashlib.blake2b(digest_size=12)
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@contextmanager
def distributed() -> Iterator[Context]:
    """The process group torchrun describes in the environment (NCCL on GPUs, gloo on CPUs), or none."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world == 1:
        yield Context(0, 1, torch.device("cuda" if cuda else "cpu"))
        return
    local = int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local)
    # a collective that waits past this raises instead of hanging (torchrun also stops every rank
    # when one process dies); long enough for rank 0 to measure tables while the others wait
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=COLLECTIVE_TIMEOUT_MIN))
    try:
        yield Context(dist.get_rank(), world, torch.device(f"cuda:{local}" if cuda else "cpu"))
        # every rank done before any tears its connections down: rank 0 aborted once in CI ("terminate
        # called without an active exception", gloo) writing its report after rank 1 had left
        dist.barrier()
    finally:
        dist.destroy_process_group()


def eval_shard(loader: DataLoader, ctx: Context) -> DataLoader:
    """This rank's disjoint part of an evaluation loader; the parts together are every sample once."""
    if ctx.world == 1:
        return loader
    part = Subset(loader.dataset, range(ctx.rank, len(loader.dataset), ctx.world))  # type: ignore[arg-type]
    return DataLoader(part, loader.batch_size, num_workers=loader.num_workers)


def accuracy(model: nn.Module, val: DataLoader, ctx: Context) -> float:
    """Top-1 over the whole validation split, each rank counting its part (on the plain module, not
    DDP: parts may differ by a batch, and DDP's forward syncs buffers across ranks)."""
    correct, total = all_sum(list(map(float, count_correct(model, eval_shard(val, ctx)))), ctx)
    return 100.0 * correct / max(total, 1.0)


def wrap(model: nn.Module, ctx: Context) -> nn.Module:
    """The model on this rank's device, inside DDP when there are several ranks."""
    model = model.to(ctx.device)
    if ctx.world == 1:
        return model
    return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def all_sum(values: list[float], ctx: Context) -> list[float]:
    if ctx.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def sync_buffers(model: nn.Module, ctx: Context) -> None:
    """Give every rank rank 0's buffers: BN running statistics drift apart on different shards.

    DDP broadcasts buffers before each forward, so the last forward's updates
    differ per rank; after training, rank 0's are the ones it saves.
    """
    if ctx.world > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def replicas_agree(model: nn.Module, ctx: Context) -> bool:
    """Every rank holds the same weights (DDP's invariant), checked on a checksum of all of them."""
    if ctx.world == 1:
        return True
    checksum = torch.stack([p.detach().double().sum() for p in model.state_dict().values() if p.is_floating_point()])
    gathered = [torch.zeros_like(checksum) for _ in range(ctx.world)]
    dist.all_gather(gathered, checksum)
    return all(torch.allclose(g, gathered[0], rtol=1e-6, atol=1e-9) for g in gathered)


@dataclass
class FinetuneResult:
    world: int
    accuracy_before: float
    accuracy_after: float
    seconds: float


def finetune(
    model: nn.Module,
    loaders: Loaders,
    config: TrainConfig,
    ctx: Context,
    on_iteration: Callable[[int, int, float], None] | None = None,
) -> FinetuneResult:
    """Train ``model`` in place on every rank (``loaders.train`` is this rank's share); accuracies are
    over the whole validation split."""
    start = time.perf_counter()
    torch.manual_seed(0)  # the same start on every rank (DDP also broadcasts rank 0's weights)
    net = wrap(model, ctx)
    before = accuracy(model, loaders.val, ctx)
    Trainer(net, loaders.train, config).run(on_iteration)
    sync_buffers(model, ctx)
    after = accuracy(model, loaders.val, ctx)
    if not replicas_agree(model, ctx):
        raise RuntimeError("DDP replicas diverged: the ranks hold different weights after training")
    return FinetuneResult(ctx.world, before, after, time.perf_counter() - start)
