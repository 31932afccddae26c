"""Reference trainer: plain PyTorch, SGD + cosine schedule + label smoothing; drives a pruner if given."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader


@dataclass
class TrainConfig:
    epochs: int = 10
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy in percent."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    model.train(was_training)
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
    model.train()
    i = 0
    for _ in range(config.epochs):
        for x, y in loader:
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
