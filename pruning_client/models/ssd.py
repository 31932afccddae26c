"""SSD: a ResNet backbone, extra downsampling stages and per-scale class/box heads.

The paper prunes SSD512; this keeps its structure (multi-scale feature maps,
one 3x3 class head and one 3x3 box head per scale) at any input size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pruning_client.models.resnet import BasicBlock, Bottleneck


class SSD(nn.Module):
    def __init__(
        self,
        num_classes: int = 21,
        anchors: int = 6,
        depths: tuple[int, ...] = (2, 2, 2),
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock,
        extra_channels: tuple[int, ...] = (256, 256, 128),
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        )
        stages, cin = [], 64
        for i, depth in enumerate(depths):
            width = 64 * 2**i
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, width, 2 if (i > 0 and j == 0) else 1))
                cin = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.backbone = nn.ModuleList(stages)
        source_channels = [cin]
        extras = []
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
            source_channels.append(cout)
            cin = cout
        self.extras = nn.ModuleList(extras)
        self.cls_heads = nn.ModuleList(nn.Conv2d(c, anchors * num_classes, 3, padding=1) for c in source_channels)
        self.box_heads = nn.ModuleList(nn.Conv2d(c, anchors * 4, 3, padding=1) for c in source_channels)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.stem(x)
        for stage in self.backbone:
            x = stage(x)
        sources = [x]
        for extra in self.extras:
            x = extra(x)
            sources.append(x)
        n = x.shape[0]
        cls = [
            h(s).permute(0, 2, 3, 1).reshape(n, -1, self.num_classes)
            for h, s in zip(self.cls_heads, sources, strict=True)
        ]
        box = [h(s).permute(0, 2, 3, 1).reshape(n, -1, 4) for h, s in zip(self.box_heads, sources, strict=True)]
        return torch.cat(cls, 1), torch.cat(box, 1)


def ssd_resnet(num_classes: int = 21) -> SSD:
    return SSD(num_classes)
