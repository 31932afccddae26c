"""Detection: box arithmetic, SSD matching, the generated COCO set, mAP by pycocotools, the SSD's network
through analysis, thinning and ONNX, and ``halp prune --task detection`` against a real CPU service."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from pruning_client.detection import digits_set
from pruning_client.detection.boxes import batched_nms, decode, encode, iou, nms
from pruning_client.detection.coco import CocoFolder, coco_folders
from pruning_client.detection.loss import match, multibox_loss
from pruning_client.detection.metrics import coco_map, predict
from pruning_client.detection.ssd import default_boxes, ssd_resnet
from pruning_client.export import export_onnx
from pruning_client.graph import analyse
from pruning_client.thinning import pruned_copy
from tests.conftest import cache_env, halp


def random_boxes(n: int, gen: torch.Generator, size: float = 100.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * size
    wh = 5 + torch.rand(n, 2, generator=gen) * size / 3
    return torch.cat([xy, xy + wh], 1)


def test_iou_of_known_boxes():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    assert iou(a, b)[0].tolist() == pytest.approx([1.0, 50 / 150, 0.0])


def test_offsets_encode_and_decode_back():
    gen = torch.Generator().manual_seed(0)
    boxes, anchors = random_boxes(50, gen), random_boxes(50, gen)
    assert torch.allclose(decode(encode(boxes, anchors), anchors), boxes, atol=1e-3)


def test_nms_keeps_no_overlapping_pair_and_drops_only_what_a_better_box_covers():
    gen = torch.Generator().manual_seed(1)
    boxes, scores = random_boxes(80, gen), torch.rand(80, generator=gen)
    kept = nms(boxes, scores, 0.4)
    overlaps = iou(boxes[kept], boxes[kept])
    assert (overlaps.fill_diagonal_(0) <= 0.4).all()
    assert scores[kept].tolist() == sorted(scores[kept].tolist(), reverse=True)
    for i in set(range(80)) - set(kept.tolist()):  # every dropped box has a kept, higher-scoring cover
        assert ((iou(boxes[i : i + 1], boxes[kept])[0] > 0.4) & (scores[kept] > scores[i])).any()


def test_batched_nms_never_suppresses_across_labels():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])
    assert len(batched_nms(boxes, torch.tensor([0.9, 0.8]), torch.tensor([1, 2]), 0.5)) == 2
    assert len(batched_nms(boxes, torch.tensor([0.9, 0.8]), torch.tensor([1, 1]), 0.5)) == 1


def test_every_ground_truth_gets_an_anchor_and_the_loss_trains_on_it():
    anchors = default_boxes([(8, 8), (4, 4), (2, 2), (1, 1)], (128, 128))
    boxes = torch.tensor([[3.0, 5, 14, 19], [40, 40, 100, 110]])  # the first smaller than any default box
    labels, matched = match(anchors, boxes, torch.tensor([3, 7]))
    assert {3, 7} <= set(labels.tolist())
    assert torch.equal(matched[labels == 3][0], boxes[0])
    logits = torch.zeros(1, len(anchors), 11, requires_grad=True)
    truth = [{"boxes": boxes, "labels": torch.tensor([3, 7])}]
    losses = multibox_loss(logits, torch.zeros(1, len(anchors), 4), anchors, truth)
    assert set(losses) == {"classification", "box_regression"} and all(v > 0 for v in losses.values())
    losses["classification"].backward()
    assert logits.grad[0, labels > 0].abs().sum() > 0


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """``HALP_DATA_DIR`` of this module's runs: the generated set is written there once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def digit_canvases(data_dir):
    return digits_set.ensure(data_dir / digits_set.default_root().name)


def test_the_generated_set_is_coco_with_exact_boxes_inside_the_canvas(digit_canvases):
    body = json.loads((digit_canvases / "val" / "instances_val.json").read_text())
    assert len(body["images"]) == digits_set.SPLITS["val"] and len(body["categories"]) == 10
    boxes = np.array([a["bbox"] for a in body["annotations"]])
    assert (boxes[:, :2] >= 0).all() and (boxes[:, :2] + boxes[:, 2:] <= digits_set.CANVAS).all()
    assert boxes[:, 3].min() >= digits_set.SIZES[0] * 0.5 and boxes[:, 3].max() <= digits_set.SIZES[1]
    # the ground truth as predictions scores 100 % with the reference evaluation; shifted boxes score less
    truth = [{**{k: a[k] for k in ("image_id", "category_id", "bbox")}, "score": 1.0} for a in body["annotations"]]
    dataset = CocoFolder(digit_canvases / "val", 128)
    assert coco_map(dataset, truth) == pytest.approx({"map50": 100.0, "map": 100.0})
    shifted = [{**t, "bbox": [t["bbox"][0] + t["bbox"][2] * 0.3, *t["bbox"][1:]]} for t in truth]
    worse = coco_map(dataset, shifted)
    assert worse["map50"] == pytest.approx(100.0) and worse["map"] < 80
    assert coco_map(dataset, []) == {"map50": 0.0, "map": 0.0}


def test_training_crops_keep_boxes_on_the_image_and_validation_does_not_move_them(digit_canvases):
    train = CocoFolder(digit_canvases / "train", 96, train=True, seed=3)
    for epoch in range(3):
        train.epoch = epoch
        for i in range(20):
            image, target = train[i]
            assert image.shape == (3, 96, 96)
            assert (target["boxes"] >= 0).all() and (target["boxes"] <= 96 + 1e-4).all()
    val = CocoFolder(digit_canvases / "val", 64)
    first = json.loads((digit_canvases / "val" / "instances_val.json").read_text())["annotations"][0]
    x, y, w, h = first["bbox"]
    assert val[0][1]["boxes"][0].tolist() == pytest.approx([v * 64 / 128 for v in (x, y, x + w, y + h)], rel=1e-5)


def test_predictions_go_back_to_image_pixels_and_category_ids(digit_canvases):
    data = coco_folders(digit_canvases, 64, 8)
    results = predict(ssd_resnet(data.num_classes, width=8), data.val)
    assert results and {r["category_id"] for r in results} <= set(range(1, 11))
    assert all(0 <= r["bbox"][0] <= 128 and r["bbox"][2] >= 0 for r in results)


def test_ssd_network_prunes_its_backbone_keeps_its_heads_and_exports():
    detector = ssd_resnet(10, width=16).eval()
    network, x = detector.network, torch.randn(1, 3, 128, 128)
    graph = analyse(network, x)
    heads = {n for n, _ in network.named_modules() if "heads." in n}
    assert heads <= set(graph.fixed_layers)
    assert len(graph.groups) >= 5
    keep = np.maximum(graph.sizes // 2 // 8 * 8, 8)
    thin = pruned_copy(network, x, graph.first_channels(keep))
    cls, box = thin(x)
    assert cls.shape == network(x)[0].shape and box.shape == network(x)[1].shape
    for name in heads:
        assert thin.get_submodule(name).out_channels == network.get_submodule(name).out_channels
    session = ort.InferenceSession(export_onnx(thin, x), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})
    assert np.allclose(got[0], cls.detach().numpy(), atol=1e-4) and np.allclose(got[1], box.detach().numpy(), atol=1e-4)
    detector.network = thin  # the detector decodes the thinned network's outputs as before
    (out,) = detector(x)
    assert set(out) == {"boxes", "scores", "labels"}


@pytest.mark.slow
def test_halp_prune_detection_meets_the_measured_budget_and_reports_map(
    digit_canvases, data_dir, shared_services, tmp_path
):
    service, out, ratio = shared_services[0], tmp_path / "run", 0.6
    env = {**cache_env(tmp_path, "cache"), "HALP_DATA_DIR": str(data_dir)}
    result = halp(
        "prune", "--task", "detection", "--model", "ssd_resnet", "--target", service.url, "--latency-ratio", str(ratio),
        "--pretrain-epochs", "3", "--steps", "2", "--prune-epochs", "0.5", "--epochs", "1", "--train-batch", "32",
        "--warmup", "0.3", "--out", str(out), env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    (target,) = report["targets"]
    # budget met as the service measured it, side by side with the unpruned network (a noisy host's
    # spread allowed for here; test_workflow's quiet-machine check holds the 5 % of SPEC 7.3). Calibrated
    # (a line, or through the measured unpruned model when noise defines none): timed alone, each layer
    # pays a fixed cost the network does not, so 0.6 of the tables' own sum would be out of reach for
    # this small network (its fit: about 2.8 x tables - 2 ms)
    assert target["latency_after_ms"] <= ratio * target["latency_before_ms"] * 1.15, target
    assert target["latency_model"] in {"line", "per-kind", "anchored"} and all(h["met"] for h in report["history"]), (
        report
    )
    assert target["accuracy_before"] is None and 2 < target["map50_before"] <= 100 and target["map_before"] > 0
    # the reported mAP is pycocotools' on the saved detector: evaluated again here, it is the same
    model = torch.load(out / "model.pt", weights_only=False)
    data = coco_folders(digit_canvases, 128, 32)
    again = coco_map(data.val.dataset, predict(model, data.val))
    assert again == pytest.approx({"map50": target["map50_after"], "map": target["map_after"]}, abs=1e-6)
    # the heads' outputs (classes x anchors, boxes x anchors) are unchanged; the backbone lost channels
    channels = report["channels"]
    heads = [n for n in channels if "heads." in n]
    assert heads and all(channels[n]["before"][1] == channels[n]["after"][1] for n in heads)
    assert any(c["after"][1] < c["before"][1] for n, c in channels.items() if n not in heads)
    assert report["task"]["name"] == "detection" and report["task"]["host_postprocess_ms"] > 0
    for name in ("model.onnx", "detections.png", "report.md"):
        assert (out / name).stat().st_size > 0, name
    assert "mAP@0.5" in (out / "report.md").read_text()
    shown = halp("report", str(out))
    assert "mAP@0.5 after" in shown.stdout and "accuracy" not in shown.stdout


def test_detection_mistakes_are_one_line_errors(data_dir, digit_canvases, tmp_path):
    (tmp_path / "plain_detector.py").write_text(
        "import torch\n"
        "class Detector(torch.nn.Module):  # torchvision's convention, but no .network to prune\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 8, 3)\n"
        "    def forward(self, images, targets=None):\n"
        "        return self.conv(images)\n"
    )
    no_annotations = tmp_path / "coco"
    (no_annotations / "train" / "images").mkdir(parents=True)
    (no_annotations / "val" / "images").mkdir(parents=True)
    env = {**os.environ, "HALP_DATA_DIR": str(data_dir), "PYTHONPATH": str(tmp_path)}
    common = ("prune", "--target", "http://127.0.0.1:9", "--pretrain-epochs", "1", "--out", str(tmp_path / "o"))
    for args, message in [
        (("--task", "segmentation"), "--task must be one of"),
        (("--task", "detection", "--data", str(tmp_path / "missing")), "nor a COCO-format folder"),
        (("--task", "detection", "--data", str(no_annotations)), "one instances_*.json"),
        (("--task", "detection", "--model", "plain_detector:Detector"), "must expose .network"),
    ]:
        out = halp(*common, *args, env=env)
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)


def test_detector_names_match_the_registry():
    from pruning_client.detection.ssd import DETECTORS
    from pruning_client.model_names import DETECTOR_NAMES

    assert set(DETECTOR_NAMES) == set(DETECTORS)


class CentreDetector(torch.nn.Module):
    """A user's detector with torchvision's convention and its own decoding: one box per image."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.network = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, 2, 1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, 2, 1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, num_classes + 4),
        )  # fmt: skip

    def forward(self, images, targets=None):
        out = self.network(images)
        if self.training:
            first = torch.stack([t["boxes"][0] if len(t["boxes"]) else torch.zeros(4) for t in targets])
            return {"box": torch.nn.functional.l1_loss(out[:, -4:], first / 128)}
        boxes = out[:, -4:].sigmoid().sort(1).values * 128
        return [
            {"boxes": b[None], "scores": s.softmax(0).max()[None], "labels": s.argmax()[None] + 1}
            for b, s in zip(boxes, out[:, :-4], strict=True)
        ]


def test_a_users_detector_with_torchvisions_convention_trains_scores_and_prunes(digit_canvases, tmp_path):
    from pruning_client.detection.metrics import host_postprocess_ms
    from pruning_client.distributed import Context
    from pruning_client.tasks import get_task

    (tmp_path / "user_detector.py").write_text(f"from {__name__} import CentreDetector\n")
    task = get_task("detection")
    data = coco_folders(digit_canvases, 128, 16)
    sys.path.insert(0, str(tmp_path))
    try:
        model = task.build("user_detector:CentreDetector", data.num_classes)
    finally:
        sys.path.remove(str(tmp_path))
    images, targets = next(iter(data.train))
    task.loss(0.0)(model.train(), images, targets).backward()
    assert model.network[0].weight.grad.abs().sum() > 0
    quality = task.evaluate(model, data.val, Context())
    assert set(quality) == {"map50", "map"} and 0 <= quality["map50"] <= 100
    assert host_postprocess_ms(model, images[:1]) > 0  # its decoding runs outside the network
    graph = analyse(task.network(model), images[:1])
    assert graph.groups and graph.fixed_layers == ["8"]  # the last linear's outputs are the answer


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [], "categories": [{"id": 1}]}, "height, width"),
        (
            {
                "images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
                "annotations": [{"id": 5, "image_id": 1, "category_id": 9, "bbox": [0, 0, 2, 2]}],
                "categories": [{"id": 1}],
            },
            "annotation 5 has no listed category",
        ),
        ({"images": [{"id": 1}], "annotations": [{"image_id": 2}], "categories": [{"id": 1}]}, "not a COCO"),
    ],
    ids=["image-size", "unknown-category", "unknown-image"],
)
def test_a_broken_instances_file_is_a_data_error_before_training(tmp_path, body, words):
    from pruning_client.data import DataError

    (tmp_path / "images").mkdir()
    (tmp_path / "instances_train.json").write_text(json.dumps(body))
    with pytest.raises(DataError, match=words):
        CocoFolder(tmp_path, 64)
