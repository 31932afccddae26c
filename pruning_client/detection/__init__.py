"""Object detection: an SSD to prune, its multibox loss and decoding, COCO-format data and mAP.

A detector is an ``nn.Module`` with the torchvision detection convention (``model(images, targets)``
returns a dict of losses in training mode, ``model(images)`` a list of ``{"boxes", "scores",
"labels"}`` in eval mode) that exposes ``network``: the submodule that runs on the device, images in,
raw head tensors out. The network is what HALP analyses, times, prunes and exports; decoding and
NMS run on the host and are timed there.
"""
