"""SSD's multibox loss: default boxes matched to ground truth, smooth L1 on offsets, cross-entropy with
hard negative mining (3 negatives per positive)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pruning_client.detection.boxes import encode, iou

MATCH_IOU = 0.5
NEGATIVES_PER_POSITIVE = 3


def match(anchors: Tensor, boxes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(label per anchor, 0 = background; matched box per anchor): IoU >= 0.5, and every ground-truth box
    gets at least its best anchor."""
    if len(boxes) == 0:
        return torch.zeros(len(anchors), dtype=torch.long, device=anchors.device), torch.zeros_like(anchors)
    overlaps = iou(anchors, boxes)  # (A, n)
    best_iou, best_gt = overlaps.max(1)
    forced = overlaps.argmax(0)  # each ground truth's best anchor
    best_gt[forced] = torch.arange(len(boxes), device=anchors.device)
    best_iou[forced] = 1.0
    assigned = labels[best_gt].clone()
    assigned[best_iou < MATCH_IOU] = 0
    return assigned, boxes[best_gt]


def multibox_loss(logits: Tensor, offsets: Tensor, anchors: Tensor, targets: list[dict[str, Tensor]]) -> dict:
    """``{"classification", "box_regression"}``, each normalised by the number of positive anchors."""
    matched = [match(anchors, t["boxes"].to(anchors.device), t["labels"].to(anchors.device)) for t in targets]
    labels = torch.stack([m[0] for m in matched])  # (N, A)
    gt = torch.stack([m[1] for m in matched])  # (N, A, 4)
    positive = labels > 0
    n_pos = positive.sum().clamp(min=1).float()
    regression = F.smooth_l1_loss(
        offsets[positive].float(), encode(gt[positive], anchors.expand_as(gt)[positive]), reduction="sum"
    )
    ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)
    # hard negatives: per image, the 3 x positives background anchors the network gets most wrong
    negative_ce = ce.detach().masked_fill(positive, -1.0)
    rank = negative_ce.argsort(1, descending=True).argsort(1)
    quota = (NEGATIVES_PER_POSITIVE * positive.sum(1, keepdim=True)).clamp(min=NEGATIVES_PER_POSITIVE)
    chosen = positive | (rank < quota)
    return {"classification": ce[chosen].sum() / n_pos, "box_regression": regression / n_pos}
