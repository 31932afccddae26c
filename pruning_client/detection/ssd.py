"""SSD (Liu et al., 2016) on a ResNet backbone: the network HALP prunes and the detector around it.

The paper prunes SSD512 (ResNet-50 backbone) on PASCAL VOC; this keeps its structure at any input
size: multi-scale feature maps (the backbone's last stage and extra downsampling layers), one 3x3
class head and one 3x3 box head per scale, default boxes of several aspect ratios per location.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pruning_client.detection.boxes import batched_nms, decode
from pruning_client.detection.loss import multibox_loss
from pruning_client.models.resnet import BasicBlock, Bottleneck

ASPECT_RATIOS = (2.0, 0.5)  # besides 1:1 at two scales: 4 default boxes per location


class SSDNetwork(nn.Module):
    """Images in, (class logits (N, A, classes + 1), box offsets (N, A, 4)) out: what runs on the device."""

    def __init__(
        self,
        num_classes: int,
        width: int = 64,
        depths: tuple[int, ...] = (2, 2, 2),
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock,
        extra_channels: tuple[int, ...] = (256, 256, 128),
        anchors: int = 2 + len(ASPECT_RATIOS),
    ) -> None:
        super().__init__()
        self.num_logits = num_classes + 1  # background is logit 0
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )  # fmt: skip
        stages, cin = [], width
        for i, depth in enumerate(depths):
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, width * 2**i, 2 if (i > 0 and j == 0) else 1))
                cin = width * 2**i * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.backbone = nn.Sequential(*stages)
        sources, extras = [cin], []
        for cout in extra_channels:
            extras.append(
                nn.Sequential(
                    nn.Conv2d(cin, cout // 2, 1, bias=False),
                    nn.BatchNorm2d(cout // 2),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(cout // 2, cout, 3, 2, 1, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True),
                )  # fmt: skip
            )
            sources.append(cout)
            cin = cout
        self.extras = nn.ModuleList(extras)
        self.cls_heads = nn.ModuleList(nn.Conv2d(c, anchors * self.num_logits, 3, padding=1) for c in sources)
        self.box_heads = nn.ModuleList(nn.Conv2d(c, anchors * 4, 3, padding=1) for c in sources)

    def features(self, x: Tensor) -> list[Tensor]:
        x = self.backbone(self.stem(x))
        out = [x]
        for extra in self.extras:
            x = extra(x)
            out.append(x)
        return out

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        sources, n = self.features(x), x.shape[0]

        def flat(heads: nn.ModuleList, width: int) -> Tensor:  # (N, A, width): per scale, location, box
            per_scale = [h(s).permute(0, 2, 3, 1).reshape(n, -1, width) for h, s in zip(heads, sources, strict=True)]
            return torch.cat(per_scale, 1)

        return flat(self.cls_heads, self.num_logits), flat(self.box_heads, 4)


def default_boxes(feature_sizes: list[tuple[int, int]], image: tuple[int, int]) -> Tensor:
    """(A, 4) corner boxes in pixels, in the heads' order (per scale, row-major, then per box).

    Scales spread linearly from 0.15 to 0.75 of the image over the feature maps; each location has
    a square box at its scale, one between its scale and the next, and the aspect ratios.
    """
    h_img, w_img = image
    k = len(feature_sizes)
    scales = [0.15 + 0.6 * i / max(k - 1, 1) for i in range(k)] + [0.9]
    out = []
    for i, (fh, fw) in enumerate(feature_sizes):
        s = scales[i]
        shapes = [(s, s), (math.sqrt(s * scales[i + 1]),) * 2]
        shapes += [(s * math.sqrt(r), s / math.sqrt(r)) for r in ASPECT_RATIOS]
        wh = torch.tensor(shapes) * torch.tensor([w_img, h_img])  # (B, 2)
        ys, xs = torch.meshgrid(
            (torch.arange(fh) + 0.5) * h_img / fh, (torch.arange(fw) + 0.5) * w_img / fw, indexing="ij"
        )
        centres = torch.stack([xs, ys], -1).reshape(-1, 1, 2).expand(-1, len(shapes), 2)
        boxes = torch.cat([centres - wh / 2, centres + wh / 2], -1).reshape(-1, 4)
        out.append(boxes)
    boxes = torch.cat(out)
    return torch.stack([boxes[:, 0].clamp(0, w_img), boxes[:, 1].clamp(0, h_img),
                        boxes[:, 2].clamp(0, w_img), boxes[:, 3].clamp(0, h_img)], 1)  # fmt: skip


class SSD(nn.Module):
    """The detector: ``network`` plus default boxes, the multibox loss and decoding with NMS.

    torchvision's convention: ``model(images, targets)`` in training mode returns the losses,
    ``model(images)`` in eval mode a list of ``{"boxes", "scores", "labels"}`` (labels from 1).
    """

    def __init__(
        self,
        network: SSDNetwork,
        score_threshold: float = 0.05,
        nms_threshold: float = 0.45,
        candidates: int = 200,
        detections: int = 100,
    ) -> None:
        super().__init__()
        self.network = network
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.candidates, self.detections = candidates, detections
        self._anchors: dict[tuple, Tensor] = {}

    def anchors(self, images: Tensor) -> Tensor:
        """Default boxes for images of this size (the feature sizes found once by a forward of the backbone)."""
        key = (tuple(images.shape[-2:]), images.device)
        if key not in self._anchors:
            with torch.no_grad():
                was = self.network.training
                self.network.eval()  # no BN statistics updated by this look
                sizes = [tuple(f.shape[-2:]) for f in self.network.features(images[:1])]
                self.network.train(was)
            self._anchors[key] = default_boxes(sizes, tuple(images.shape[-2:])).to(images.device)  # type: ignore[arg-type]
        return self._anchors[key]

    def forward(self, images: Tensor, targets: list[dict[str, Tensor]] | None = None):
        anchors = self.anchors(images)
        logits, offsets = self.network(images)
        if self.training:
            if targets is None:
                raise ValueError("in training mode the detector needs targets (boxes and labels per image)")
            return multibox_loss(logits, offsets, anchors, targets)
        return self.postprocess(logits, offsets, anchors, tuple(images.shape[-2:]))

    @torch.no_grad()
    def postprocess(self, logits: Tensor, offsets: Tensor, anchors: Tensor, image: tuple[int, int]) -> list[dict]:
        """Per image: class scores above the threshold, the best ``candidates``, decoded, NMS per class."""
        scores = F.softmax(logits.float(), -1)[..., 1:]  # (N, A, C) foreground
        boxes = decode(offsets.float(), anchors)  # (N, A, 4)
        limit = torch.tensor([image[1], image[0], image[1], image[0]], device=boxes.device, dtype=boxes.dtype)
        boxes = torch.minimum(boxes.clamp(min=0), limit)
        out = []
        for s, b in zip(scores, boxes, strict=True):
            flat = s.flatten()
            top = flat.topk(min(self.candidates, flat.numel())).indices
            top = top[flat[top] > self.score_threshold]
            anchor, label = top // s.shape[1], top % s.shape[1] + 1
            keep = batched_nms(b[anchor].cpu(), flat[top].cpu(), label.cpu(), self.nms_threshold)[: self.detections]
            keep = keep.to(top.device)
            out.append({"boxes": b[anchor][keep], "scores": flat[top][keep], "labels": label[keep]})
        return out


def ssd_resnet(num_classes: int = 20, width: int = 32) -> SSD:
    """SSD on a three-stage ResNet (BasicBlocks): width 32 trains in minutes on a CPU; 64 is ResNet-18's."""
    return SSD(SSDNetwork(num_classes, width, extra_channels=(4 * width, 4 * width, 2 * width)))


def ssd_resnet50(num_classes: int = 20) -> SSD:
    """The paper's backbone family: ResNet-50's first three stages (Bottlenecks), SSD512's extras."""
    return SSD(SSDNetwork(num_classes, 64, (3, 4, 6), Bottleneck, extra_channels=(512, 256, 256)))


DETECTORS = {"ssd_resnet": ssd_resnet, "ssd_resnet50": ssd_resnet50}
