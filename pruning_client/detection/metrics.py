"""mAP by pycocotools' COCOeval (the reference implementation), over a COCO-format split."""

from __future__ import annotations

import contextlib
import io
import statistics
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

from pruning_client.detection.coco import CocoFolder


@torch.no_grad()
def predict(detector: nn.Module, loader: DataLoader) -> list[dict]:
    """Every validation image's detections as COCO results (its own pixels and category ids)."""
    dataset: CocoFolder = loader.dataset  # type: ignore[assignment]
    device = next(detector.parameters()).device
    was_training = detector.training
    detector.eval()
    results: list[dict] = []
    try:
        for images, targets in loader:
            for target, prediction in zip(targets, detector(images.to(device)), strict=True):
                results += dataset.to_coco(int(target["image_id"]), prediction)
    finally:
        detector.train(was_training)
    return results


def coco_map(dataset: CocoFolder, results: list[dict]) -> dict[str, float]:
    """``{"map50", "map"}`` in percent: AP at IoU 0.5 and averaged over IoU 0.5:0.95 (COCO's primary metric)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {"map50": 0.0, "map": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO(str(dataset.annotations))
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"map50": 100.0 * max(float(evaluation.stats[1]), 0.0), "map": 100.0 * max(float(evaluation.stats[0]), 0.0)}


def evaluate_map(detector: nn.Module, loader: DataLoader) -> dict[str, float]:
    return coco_map(loader.dataset, predict(detector, loader))  # type: ignore[arg-type]


@torch.no_grad()
def host_postprocess_ms(detector: nn.Module, images: torch.Tensor, repeats: int = 20) -> float:
    """Median time of what the detector does beyond its ``network`` (decoding, NMS) on this host.

    Timed inside each eval forward: hooks mark when ``network`` starts and ends, and the rest of the
    call is what runs on the host. Two medians taken apart (whole forward less network) subtract
    noise from noise, and came out 0 on a busy host for a detector whose NMS takes milliseconds.
    """
    marks: list[float] = []
    hooks = [
        detector.network.register_forward_pre_hook(lambda *_: marks.append(time.perf_counter())),
        detector.network.register_forward_hook(lambda *_: marks.append(time.perf_counter())),
    ]
    was_training = detector.training
    detector.eval()
    try:
        detector(images)  # warm-up
        spans = []
        for _ in range(repeats):
            marks.clear()
            start = time.perf_counter()
            detector(images)
            whole = time.perf_counter() - start
            network = sum(end - begin for begin, end in zip(marks[::2], marks[1::2], strict=True))
            spans.append(1e3 * (whole - network))
    finally:
        detector.train(was_training)
        for hook in hooks:
            hook.remove()
    return statistics.median(spans)
