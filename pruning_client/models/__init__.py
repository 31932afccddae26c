"""Reference architectures written for this project (torchvision is not a dependency)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from pruning_client.models.mobilenet import MobileNetV1, MobileNetV2, mobilenet_v1, mobilenet_v2
from pruning_client.models.resnet import ResNet, resnet18, resnet20, resnet50, resnet56, resnet101, resnext50_32x4d
from pruning_client.models.vgg import VGG, vgg16_bn

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnext50_32x4d": resnext50_32x4d,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "vgg16_bn": vgg16_bn,
}

__all__ = ["MODELS", "VGG", "MobileNetV1", "MobileNetV2", "ResNet", *MODELS]
