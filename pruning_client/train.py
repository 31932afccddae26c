"""Reference trainer: plain PyTorch, SGD + cosine schedule + label smoothing; drives a pruner if given.

Runs on the device the model's parameters are on, and under DDP (see ``distributed``) when the
model is wrapped and the loader's sampler is a ``DistributedSampler``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from pruning_client.ui import UI


def free_cores(load: float | None = None) -> int:
    """CPU threads training can use without fighting other work: this process's cores less the load.

    On a busy machine torch's default (every core) makes its threads wait on each other: a 90 s demo
    took 36 minutes under load. ``load`` is the 1-minute load average, read before a run loads the
    machine itself (it would count its own threads); ``OMP_NUM_THREADS``, when set, wins.
    """
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = load if load is not None else os.getloadavg()[0]
    return max(1, min(cores, round(cores - busy)))


@dataclass
class TrainConfig:
    epochs: int = 10
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1


@torch.no_grad()
def count_correct(model: nn.Module, loader: DataLoader) -> tuple[int, int]:
    """(top-1 correct, samples) over the loader."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
        total += len(y)
    model.train(was_training)
    return correct, total


def evaluate(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy in percent."""
    correct, total = count_correct(model, loader)
    return 100.0 * correct / max(total, 1)


def train(
    model: nn.Module,
    loader: DataLoader,
    config: TrainConfig,
    pruner=None,
    on_iteration: Callable[[int, int, float], None] | None = None,
) -> None:
    """Train in place; ``pruner.step()`` runs after each backward, ``on_iteration(i, total, loss)`` after each step."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on BN and biases
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        momentum=config.momentum,
        nesterov=True,
    )
    total = config.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(total, 1))
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    device = next(model.parameters()).device
    set_epoch = getattr(loader.sampler, "set_epoch", None)  # a DistributedSampler reshuffles per epoch
    model.train()
    i = 0
    for epoch in range(config.epochs):
        if set_epoch is not None:
            set_epoch(epoch)
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward()
            if pruner is not None:
                pruner.step()
            optimizer.step()
            scheduler.step()
            i += 1
            if on_iteration:
                on_iteration(i, total, loss.item())


def train_with_progress(
    model: nn.Module, loader: DataLoader, epochs: float, lr: float, ui: UI, what: str, pruner=None
) -> None:
    """``train`` with a progress bar named ``what``; a fractional ``epochs`` counts its bar in iterations."""
    total = max(1, math.ceil(epochs * len(loader)))
    ui.bar(what, what, 0, total)

    def progress(i: int, _total: int, loss: float) -> None:
        ui.bar(what, f"{what} (loss {loss:.3f})", i, total)

    train(model, loader, TrainConfig(epochs=max(1, math.ceil(epochs)), lr=lr), pruner, progress)
    ui.done(what)
