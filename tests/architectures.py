"""Small versions of the architecture families users bring, written here (nothing downloaded).

Each keeps the structure that matters to graph analysis (how channels couple) at a size that
analyses, prunes and exports in seconds on a CPU: 32x32 inputs, tens of channels.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pruning_client.attention import convert_attention


def conv_bn(cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if act else nn.Sequential(*layers)


class Classifier(nn.Module):
    """stem -> body -> global pool -> linear: the frame every family below fills."""

    def __init__(self, stem: nn.Module, body: nn.Module, width: int, classes: int = 10) -> None:
        super().__init__()
        self.stem, self.body, self.fc = stem, body, nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.body(self.stem(x)), 1).flatten(1))


# --- ShuffleNetV2: channel split + channel shuffle --------------------------------------------
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            conv_bn(half, half, 1), conv_bn(half, half, 3, groups=half, act=False), conv_bn(half, half, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((a, self.branch(b)), 1), 2)


def shufflenet() -> nn.Module:
    return Classifier(conv_bn(3, 32), nn.Sequential(ShuffleUnit(32), ShuffleUnit(32)), 32)


# --- inverted residual with squeeze-excitation (MobileNetV3) ----------------------------------
class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(channels, channels // 4, 1), nn.Conv2d(channels // 4, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))


class InvertedResidualSE(nn.Module):
    def __init__(self, channels: int, expand: int = 4) -> None:
        super().__init__()
        hidden = channels * expand
        self.block = nn.Sequential(
            conv_bn(channels, hidden, 1), conv_bn(hidden, hidden, 3, groups=hidden), SqueezeExcite(hidden),
            conv_bn(hidden, channels, 1, act=False),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def mobilenet_v3() -> nn.Module:
    return Classifier(conv_bn(3, 16), nn.Sequential(InvertedResidualSE(16), InvertedResidualSE(16)), 16)


# --- DenseNet: every layer's output concatenated to its input ---------------------------------
class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, growth, 3, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.conv(x)), 1)


def densenet() -> nn.Module:
    body = nn.Sequential(DenseLayer(16, 8), DenseLayer(24, 8), DenseLayer(32, 8), nn.BatchNorm2d(40), nn.ReLU())
    return Classifier(nn.Conv2d(3, 16, 3, 1, 1), body, 40)


# --- Inception: parallel branches concatenated ------------------------------------------------
class Inception(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b1 = conv_bn(cin, 16, 1)
        self.b3 = nn.Sequential(conv_bn(cin, 16, 1), conv_bn(16, 24, 3))
        self.b5 = nn.Sequential(conv_bn(cin, 8, 1), conv_bn(8, 8, 5))
        self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, 8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.b1(x), self.b3(x), self.b5(x), self.pool(x)), 1)


class GoogLeNet(nn.Module):
    """Inception blocks with an auxiliary head that only runs in training (as torchvision's)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem, self.a, self.b = conv_bn(3, 32), Inception(32), Inception(56)
        self.aux = nn.Sequential(
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(56 * 16, 64), nn.ReLU(), nn.Linear(64, classes)
        )
        self.fc = nn.Linear(56, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(self.stem(x))
        out = self.fc(F.adaptive_avg_pool2d(self.b(a), 1).flatten(1))
        return out + self.aux(a) if self.training else out


# --- SqueezeNet fire modules ------------------------------------------------------------------
class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU())
        self.e1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU())
        self.e3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x)
        return torch.cat((self.e1(s), self.e3(s)), 1)


class SqueezeNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), Fire(32, 8, 16), Fire(32, 8, 16))
        self.classifier = nn.Sequential(nn.Conv2d(32, classes, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# --- RegNet-style grouped bottleneck ----------------------------------------------------------
class GroupedBottleneck(nn.Module):
    def __init__(self, channels: int, group_width: int = 8) -> None:
        super().__init__()
        self.block = nn.Sequential(
            conv_bn(channels, channels, 1), conv_bn(channels, channels, 3, groups=channels // group_width),
            conv_bn(channels, channels, 1, act=False),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.block(x))


def regnet() -> nn.Module:
    return Classifier(conv_bn(3, 32), nn.Sequential(GroupedBottleneck(32), GroupedBottleneck(32)), 32)


# --- ConvNeXt: depthwise 7x7, layer norm over channels, MLP as linears ------------------------
class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.dw(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return x + y


def convnext() -> nn.Module:
    return Classifier(nn.Conv2d(3, 32, 4, 4), nn.Sequential(ConvNeXtBlock(32), ConvNeXtBlock(32)), 32)


# --- ViT: patch embedding, nn.MultiheadAttention, MLP -----------------------------------------
class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attention(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, patch: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.blocks = nn.Sequential(EncoderBlock(dim, heads), EncoderBlock(dim, heads))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(tokens)).mean(1))


# --- Swin: window attention and patch merging by a concat of strided slices -------------------
class PatchMerging(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm, self.reduction = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        parts = (x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2])
        return self.reduction(self.norm(torch.cat(parts, -1)))


class WindowBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int) -> None:
        super().__init__()
        self.window, self.shift, self.heads = window, shift, heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        b, h, w, c = x.shape
        y = torch.roll(self.norm1(x), (-self.shift, -self.shift), (1, 2))
        win = self.window
        y = y.view(b, h // win, win, w // win, win, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, win * win, c)
        q, k, v = self.qkv(y).reshape(y.shape[0], win * win, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(-1, win * win, c)
        y = self.proj(y).view(b, h // win, w // win, win, win, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        x = x + torch.roll(y, (self.shift, self.shift), (1, 2))
        return x + self.mlp(self.norm2(x))


class Swin(nn.Module):
    def __init__(self, dim: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.stage1 = nn.Sequential(WindowBlock(dim, 2, 4, 0), WindowBlock(dim, 2, 4, 2))
        self.merge = PatchMerging(dim)
        self.stage2 = WindowBlock(2 * dim, 4, 2, 0)
        self.head = nn.Linear(2 * dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage1(self.embed(x).permute(0, 2, 3, 1))
        return self.head(self.stage2(self.merge(x)).mean((1, 2)))


# --- MaxViT: MBConv, then attention in local blocks and in a dilated grid ----------------------
class PartitionAttention(nn.Module):
    """Self-attention over 2x2 partitions of a (B, C, H, W) map: local blocks, or a grid across it."""

    def __init__(self, dim: int, heads: int, grid: bool) -> None:
        super().__init__()
        self.heads, self.grid = heads, grid
        self.norm, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = 2
        if self.grid:  # (B, C, p, H/p, p, W/p): tokens of a partition are H/p apart
            t = x.view(b, c, p, h // p, p, w // p).permute(0, 3, 5, 2, 4, 1)
        else:
            t = x.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        t = t.reshape(-1, p * p, c)
        q, k, v = self.qkv(self.norm(t)).reshape(t.shape[0], p * p, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(t.shape[0], p * p, c))
        if self.grid:
            y = y.view(b, h // p, w // p, p, p, c).permute(0, 5, 3, 1, 4, 2).reshape(b, c, h, w)
        else:
            y = y.view(b, h // p, w // p, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)
        return x + y


def maxvit() -> nn.Module:
    body = nn.Sequential(
        InvertedResidualSE(16), PartitionAttention(16, 2, grid=False), PartitionAttention(16, 2, grid=True)
    )
    return Classifier(conv_bn(3, 16, 3, 4), body, 16)


# --- VGG at 224x224: a classifier input of 512 x 7 x 7 ----------------------------------------
class VGGHead(nn.Module):
    """A VGG classifier's shape at 224x224 (flatten of 512x7x7 into a linear) on a small body."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 64, 3, 4), conv_bn(64, 512, 3, 2), nn.AdaptiveAvgPool2d(7))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(512 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def vit_heads() -> nn.Module:
    """The ViT as ``halp prune`` runs it: its attention converted to ``HeadAttention`` (heads prunable)."""
    model = ViT()
    convert_attention(model)
    return model


FAMILIES = {
    "shufflenet_v2": (shufflenet, 32),
    "mobilenet_v3_se": (mobilenet_v3, 32),
    "densenet": (densenet, 32),
    "googlenet_aux": (GoogLeNet, 32),
    "squeezenet": (SqueezeNet, 32),
    "regnet": (regnet, 32),
    "convnext": (convnext, 32),
    "vit": (ViT, 32),
    "vit_heads": (vit_heads, 32),
    "swin": (Swin, 32),
    "vgg_224_head": (VGGHead, 56),
    "maxvit": (maxvit, 32),
}
