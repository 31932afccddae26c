"""What a pruning run is asked to do: the ``halp profile`` / ``halp prune`` options as one dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pruning_client.train import TrainConfig


@dataclass
class RunSettings:
    targets: list[str]
    task: str = "classification"  # or "detection" (``tasks``)
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
    joint: str = "full"  # the joint (cin, cout) solver: full, near or off (``pruner.JOINT_MODES``)
    per_target: bool = False
    out: Path = Path("halp-out")
    token: str | None = None
    seed: int = 0
    measure_steps: bool = True
    cache_dir: Path | None = None
    fixed: list[str] = field(default_factory=list)  # modules whose output channels are never pruned
    calibrate: bool = True  # fit a, b on measured whole models; False: the tables' sum predicts
    max_drop: float = 5.0  # the report warns where a quality metric fell by more points than this
    allow_minimum: bool = False  # a budget out of reach keeps the smallest model instead of stopping the run
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
