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

from pruning_client.sampling import EpochSampler
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
    """The training recipe (the paper's: SGD with momentum and weight decay, cosine or step decay, warm-up)."""

    epochs: float = 10
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    schedule: str = "cosine"  # or "step": x0.1 at 1/3 and 2/3 of the phase
    warmup: float = 0.0  # fraction of the phase over which the learning rate ramps up linearly
    amp: bool = False  # fp16 autocast with loss scaling, on CUDA only
    channels_last: bool = False

    def lr_at(self, progress: float) -> float:
        """The learning rate at ``progress`` (0..1) through the phase: a function of progress, not of an
        iteration count, so a run resumed on another number of processes keeps its schedule."""
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}")
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if self.schedule == "cosine" else 0.1 ** int(3 * progress)
        ramp = min(1.0, (progress + 1e-9) / self.warmup) if self.warmup > 0 else 1.0
        return self.lr * decay * ramp


SCHEDULES = ("cosine", "step")
Loss = Callable[[nn.Module, torch.Tensor, object], torch.Tensor]  # (net, inputs, targets) -> loss


def cross_entropy(label_smoothing: float = 0.0) -> Loss:
    """Classification's loss: cross-entropy of the logits ``net(x)``."""
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    return lambda net, x, y: criterion(net(x), y)  # type: ignore[arg-type]


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


class Trainer:
    """One phase of training (``config.epochs``, or ``iterations`` minibatches), resumable at any minibatch.

    ``loss(net, x, y)``: cross-entropy by default; a detector's summed losses for detection (``tasks``).

    ``net`` is what runs forward (the model, or its DistributedDataParallel wrapper); a ``pruner`` steps
    after every backward (on gradients unscaled from AMP's loss scaling, which would otherwise scale
    the saliency). The position is counted in iterations of this process; ``state_dict`` holds it with
    the optimizer's and the loss scaler's state. Resuming mid-epoch needs the loader's sampler to skip
    (``sampling.EpochSampler``); any other loader restarts its epoch.
    """

    def __init__(
        self,
        net: nn.Module,
        loader: DataLoader,
        config: TrainConfig,
        pruner=None,
        iterations: int | None = None,
        loss: Loss | None = None,
    ) -> None:
        self.net, self.loader, self.config, self.pruner = net, loader, config, pruner
        self.loss = loss or cross_entropy(config.label_smoothing)
        decay, no_decay = [], []
        for p in net.parameters():
            (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on BN and biases
        self.optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr,
            momentum=config.momentum,
            nesterov=True,
        )
        self.device = next(net.parameters()).device
        self.amp = config.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        sampler = getattr(loader, "sampler", None)
        self.per_epoch = getattr(sampler, "batches_per_epoch", None) or len(loader)
        self.total = iterations if iterations is not None else math.ceil(config.epochs * self.per_epoch)
        self.iteration = 0

    def state_dict(self) -> dict:
        return {
            "iteration": self.iteration,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict, scale: float = 1.0) -> None:
        """``scale``: the saved run's processes over this run's; an epoch's phase counts its position in
        samples, so on fewer processes (more iterations per epoch) it continues where the samples were."""
        self.iteration = min(self.total, round(state["iteration"] * scale))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])

    @property
    def done(self) -> bool:
        return self.iteration >= self.total

    def run(
        self,
        on_iteration: Callable[[int, int, float], None] | None = None,
        on_checkpoint: Callable[[str], None] | None = None,
    ) -> None:
        """Train to the end of the phase; ``on_checkpoint(why)`` after a pruning step and at each epoch's end."""
        config = self.config
        memory = torch.channels_last if config.channels_last else torch.contiguous_format
        self.net.train()
        while not self.done:
            epoch, skip = divmod(self.iteration, self.per_epoch)
            sampler = getattr(self.loader, "sampler", None)
            if isinstance(sampler, EpochSampler):
                sampler.set_epoch(epoch, skip)
            elif hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)  # type: ignore[union-attr]
            for x, y in self.loader:
                x = x.to(self.device, non_blocking=True, memory_format=memory)
                if isinstance(y, torch.Tensor):  # detection targets (a list of dicts) go to the device in the loss
                    y = y.to(self.device, non_blocking=True)
                for group in self.optimizer.param_groups:
                    group["lr"] = config.lr_at(self.iteration / self.total)
                self.optimizer.zero_grad(set_to_none=True)
                with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                    loss = self.loss(self.net, x, y)
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
                pruned = self.pruner.step() if self.pruner is not None else None
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.iteration += 1
                if on_iteration:
                    on_iteration(self.iteration, self.total, loss.item())
                end_of_epoch = self.iteration % self.per_epoch == 0
                if on_checkpoint and (pruned is not None or end_of_epoch or self.done):
                    on_checkpoint("a pruning step" if pruned is not None else "the end of an epoch")
                if self.done or end_of_epoch:
                    break


def train(
    model: nn.Module,
    loader: DataLoader,
    config: TrainConfig,
    pruner=None,
    on_iteration: Callable[[int, int, float], None] | None = None,
) -> None:
    """Train in place; ``pruner.step()`` runs after each backward, ``on_iteration(i, total, loss)`` after each step."""
    Trainer(model, loader, config, pruner).run(on_iteration)


def run_with_progress(trainer: Trainer, ui: UI, what: str, on_checkpoint: Callable[[str], None] | None = None) -> None:
    """``trainer.run`` with one progress bar per epoch, named ``what``."""
    epochs = math.ceil(trainer.total / trainer.per_epoch)

    def progress(i: int, total: int, loss: float) -> None:
        epoch, within = divmod(i - 1, trainer.per_epoch)
        length = min(trainer.per_epoch, total - epoch * trainer.per_epoch)
        ui.bar(what, f"{what}, epoch {epoch + 1}/{epochs} (loss {loss:.3f})", within + 1, length)
        if within + 1 == length:
            ui.done(what)

    trainer.run(progress, on_checkpoint)
    ui.done(what)
