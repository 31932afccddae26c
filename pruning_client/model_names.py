"""Names of the reference models, importable without torch (the CLI's help text needs them)."""

MODEL_NAMES = (
    "resnet18",
    "resnet50",
    "resnet101",
    "resnext50_32x4d",
    "resnet20",
    "resnet56",
    "mobilenet_v1",
    "mobilenet_v2",
    "vgg16_bn",
)
DETECTOR_NAMES = ("ssd_resnet", "ssd_resnet50")  # --task detection
