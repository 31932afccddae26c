"""Box arithmetic in (x1, y1, x2, y2) pixels: IoU, the SSD offsets encoding, and non-maximum suppression."""

from __future__ import annotations

import torch
from torch import Tensor

# SSD's offset scaling: centre offsets / 0.1 and log-size ratios / 0.2 bring both to unit variance
CENTRE_VARIANCE, SIZE_VARIANCE = 0.1, 0.2


def area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def iou(a: Tensor, b: Tensor) -> Tensor:
    """(len(a), len(b)) intersection over union."""
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(2)
    return inter / (area(a)[:, None] + area(b)[None, :] - inter).clamp(min=1e-9)


def to_centre(boxes: Tensor) -> Tensor:
    return torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], -1)


def to_corners(boxes: Tensor) -> Tensor:
    return torch.cat([boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2], -1)


def encode(boxes: Tensor, anchors: Tensor) -> Tensor:
    """Offsets of corner ``boxes`` from corner ``anchors`` (same leading shape), SSD's parametrisation."""
    b, a = to_centre(boxes), to_centre(anchors)
    centre = (b[..., :2] - a[..., :2]) / a[..., 2:] / CENTRE_VARIANCE
    size = torch.log(b[..., 2:].clamp(min=1e-6) / a[..., 2:]) / SIZE_VARIANCE
    return torch.cat([centre, size], -1)


def decode(offsets: Tensor, anchors: Tensor) -> Tensor:
    """Inverse of ``encode``: corner boxes from offsets relative to ``anchors``."""
    a = to_centre(anchors)
    centre = a[..., :2] + offsets[..., :2] * CENTRE_VARIANCE * a[..., 2:]
    size = a[..., 2:] * torch.exp((offsets[..., 2:] * SIZE_VARIANCE).clamp(max=8.0))
    return to_corners(torch.cat([centre, size], -1))


def nms(boxes: Tensor, scores: Tensor, threshold: float) -> Tensor:
    """Indices of the boxes greedy NMS keeps, by decreasing score.

    One IoU matrix, then a pass in score order over boolean rows: the pass is over the (at most a few
    hundred) candidates, each step a vector operation.
    """
    order = scores.argsort(descending=True)
    overlaps = iou(boxes[order], boxes[order]) > threshold
    alive = torch.ones(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if alive[i]:
            alive[i + 1 :] &= ~overlaps[i, i + 1 :]
    return order[alive]


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, threshold: float) -> Tensor:
    """NMS within each label: boxes of different labels are shifted apart so they never overlap."""
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long)
    shift = labels.to(boxes.dtype)[:, None] * (boxes.max() + 1)
    return nms(boxes + shift, scores, threshold)
