"""What a run trains and scores: image classification (top-1) or object detection (COCO mAP).

A task gives the run its data, its model, the part of the model that runs on the device (what is
analysed, pruned, exported and timed: the whole classifier, a detector's ``network``), the training
loss and the quality metrics. Everything else in a run is the same for both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn

from pruning_client.data import DataError, Feed, Loaders, load_data
from pruning_client.distributed import Context, accuracy
from pruning_client.models.registry import ModelError, build_model
from pruning_client.train import Loss, cross_entropy


class Task(Protocol):
    name: str
    # training from scratch: default epochs (on the digits), learning rate, least warm-up (fraction)
    pretrain: tuple[int, float, float]
    compares_outputs: bool  # whether ``compare`` needs the unpruned model

    def classes(self, data: str) -> int: ...
    def input_size(self, data: str) -> int: ...
    def load(self, data: str, input_size: int, batch: int, seed: int, feed: Feed) -> Loaders: ...
    def build(self, spec: str, num_classes: int) -> nn.Module: ...
    def network(self, model: nn.Module) -> nn.Module: ...
    def loss(self, label_smoothing: float) -> Loss: ...
    def evaluate(self, model: nn.Module, val, ctx: Context) -> dict[str, float]:
        """Quality in percent by metric name; the report keeps ``<name>_before`` / ``_after`` per target."""
        ...

    def describe(self, quality: dict[str, float]) -> str: ...
    def compare(self, unpruned: nn.Module | None, pruned: nn.Module, val, deploy: Tensor, out: Path) -> dict:
        """What the report adds for this task beyond the metrics (rank 0, after fine-tuning)."""
        ...


class Classification:
    name, compares_outputs = "classification", False
    pretrain = (8, 0.05, 0.0)

    def classes(self, data: str) -> int:
        """Without loading the data (``halp profile``): the digits' 10, else ImageNet's 1,000."""
        return 10 if data == "digits" else 1000

    def input_size(self, data: str) -> int:
        return 32 if data == "digits" else 224

    def load(self, data: str, input_size: int | None, batch: int, seed: int, feed: Feed) -> Loaders:
        return load_data(data, input_size, batch, seed, feed)

    def build(self, spec: str, num_classes: int) -> nn.Module:
        return build_model(spec, num_classes)

    def network(self, model: nn.Module) -> nn.Module:
        return model

    def loss(self, label_smoothing: float) -> Loss:
        return cross_entropy(label_smoothing)

    def evaluate(self, model: nn.Module, val, ctx: Context) -> dict[str, float]:
        return {"accuracy": accuracy(model, val, ctx)}

    def describe(self, quality: dict[str, float]) -> str:
        return f"accuracy {quality['accuracy']:.2f} %"

    def compare(self, unpruned: nn.Module | None, pruned: nn.Module, val, deploy: Tensor, out: Path) -> dict:
        return {}


class Detection:
    """Detectors with torchvision's convention and a ``network`` submodule (``pruning_client.detection``)."""

    name, compares_outputs = "detection", True
    # from random weights the multibox loss needs a gentler start: 0.02 after a warm-up (4 epochs on the
    # digit canvases: mAP@0.5 16 % with 5 % warm-up, under 1 % without)
    pretrain = (20, 0.02, 0.05)

    def classes(self, data: str) -> int:
        """The categories of the annotation file, read without the images (``halp profile``)."""
        if data == "digits":
            return 10
        import json

        from pruning_client.detection.coco import annotation_file

        try:
            return len(json.loads(annotation_file(Path(data).expanduser() / "train").read_text())["categories"])
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"--data {data}: cannot read its categories ({e})") from None

    def input_size(self, data: str) -> int:  # noqa: ARG002 - one default for every detection set
        return 128

    def load(self, data: str, input_size: int | None, batch: int, seed: int, feed: Feed) -> Loaders:
        from pruning_client.detection import digits_set
        from pruning_client.detection.coco import coco_folders

        if data == "digits":
            root = digits_set.ensure()
        else:
            root = Path(data).expanduser()
            if not root.is_dir():
                raise DataError(f"--data {data!r}: neither 'digits' nor a COCO-format folder with train/ and val/")
        return coco_folders(root, input_size or self.input_size(data), batch, seed, feed)

    def build(self, spec: str, num_classes: int) -> nn.Module:
        from pruning_client.detection.ssd import DETECTORS

        model = DETECTORS[spec](num_classes=num_classes) if spec in DETECTORS else build_model(spec, num_classes)
        self.network(model)
        return model

    def network(self, model: nn.Module) -> nn.Module:
        network = getattr(model, "network", None)
        if not isinstance(network, nn.Module):
            raise ModelError(
                f"a detector must expose .network, the submodule that runs on the device (images in, head "
                f"tensors out) that HALP prunes and times; {type(model).__name__} has none"
            )
        return network

    def loss(self, label_smoothing: float) -> Loss:  # noqa: ARG002 - a classifier's knob
        def total(net: nn.Module, x: Tensor, targets) -> Tensor:
            losses = net(x, targets)
            if not isinstance(losses, dict) or not losses:
                raise ModelError("a detector in training mode must return a dict of losses, as torchvision's do")
            return torch.stack([v.float() for v in losses.values()]).sum()

        return total

    def evaluate(self, model: nn.Module, val, ctx: Context) -> dict[str, float]:
        """COCO mAP on rank 0 (pycocotools is one process's work; the set is the validation split)."""
        from pruning_client.detection.metrics import evaluate_map

        return ctx.from_main(lambda: evaluate_map(model, val))

    def describe(self, quality: dict[str, float]) -> str:
        return f"mAP@0.5 {quality['map50']:.2f} %, mAP@[.5:.95] {quality['map']:.2f} %"

    def compare(self, unpruned: nn.Module | None, pruned: nn.Module, val, deploy: Tensor, out: Path) -> dict:
        """Decoding and NMS timed on this host (the network's latency is the targets'), and a plot of
        the detections of the unpruned and the pruned model on the first validation images."""
        from pruning_client.detection.metrics import host_postprocess_ms
        from pruning_client.plots import detections_plot

        pruned = pruned.cpu()
        detections_plot(unpruned, pruned, val.dataset, out / "detections.png")
        return {"host_postprocess_ms": host_postprocess_ms(pruned, deploy), "host": host_name()}


def host_name() -> str:
    import platform

    return f"{platform.machine()} CPU, {torch.get_num_threads()} thread(s)"


TASKS: dict[str, Task] = {"classification": Classification(), "detection": Detection()}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"--task must be one of {', '.join(TASKS)}")
    return TASKS[name]
