"""Data-parallel training under ``torchrun`` (DDP): the reference trainer on many GPUs or CPU processes.

``torchrun --nproc-per-node N -m pruning_client.cli finetune OUT/model.pt --data PATH`` fine-tunes a
pruned model on N devices; without torchrun's environment the same command runs as one process.
Each rank trains on its own shard of the data, DDP averages the gradients, evaluation counts are
summed over the ranks, and only rank 0 writes files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from pruning_client.data import Loaders
from pruning_client.train import TrainConfig, count_correct, train


@dataclass(frozen=True)
class Context:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


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
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield Context(dist.get_rank(), world, torch.device(f"cuda:{local}" if cuda else "cpu"))
    finally:
        dist.destroy_process_group()


def shard(loader: DataLoader, ctx: Context, training: bool, seed: int = 0) -> DataLoader:
    """This rank's part of a loader: shuffled shards for training, a disjoint exact split for evaluation."""
    if ctx.world == 1:
        return loader
    if training:
        sampler = DistributedSampler(loader.dataset, ctx.world, ctx.rank, shuffle=True, seed=seed, drop_last=True)
        return DataLoader(
            loader.dataset, loader.batch_size, sampler=sampler, num_workers=loader.num_workers, drop_last=True
        )
    part = Subset(loader.dataset, range(ctx.rank, len(loader.dataset), ctx.world))  # type: ignore[arg-type]
    return DataLoader(part, loader.batch_size, num_workers=loader.num_workers)


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
    """Train ``model`` in place on every rank; accuracies are over the whole validation split."""
    start = time.perf_counter()
    torch.manual_seed(0)  # the same start on every rank (DDP also broadcasts rank 0's weights)
    net = wrap(model, ctx)
    train_loader, val_loader = shard(loaders.train, ctx, training=True), shard(loaders.val, ctx, training=False)

    def accuracy() -> float:
        # the plain module, not DDP: shards may differ by a batch, and DDP's forward syncs buffers across ranks
        correct, total = all_sum(list(map(float, count_correct(model, val_loader))), ctx)
        return 100.0 * correct / max(total, 1.0)

    before = accuracy()
    train(net, train_loader, config, on_iteration=on_iteration)
    sync_buffers(model, ctx)
    after = accuracy()
    if not replicas_agree(model, ctx):
        raise RuntimeError("DDP replicas diverged: the ranks hold different weights after training")
    return FinetuneResult(ctx.world, before, after, time.perf_counter() - start)
