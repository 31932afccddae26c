"""COCO-format detection folders: ``ROOT/train`` and ``ROOT/val``, each ``images/`` + ``instances_*.json``.

Images are resized to ``input_size`` x ``input_size`` (boxes scaled with them) and normalised as
for ImageNet; labels are the categories' positions in id order, from 1 (0 is background).
Predictions go back to each image's own pixels and category ids for evaluation (``metrics``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from pruning_client.data import IMAGENET_MEAN, IMAGENET_STD, DataError, Feed, Loaders, train_loader
from pruning_client.sampling import sample_generator


def annotation_file(split: Path) -> Path:
    found = sorted(split.glob("instances_*.json"))
    if not (split / "images").is_dir() or len(found) != 1:
        raise DataError(
            f"{split} must hold an images/ folder and one instances_*.json (COCO format); found "
            f"{'images/' if (split / 'images').is_dir() else 'no images/'} and {len(found)} instances_*.json"
        )
    return found[0]


class CocoFolder(Dataset):
    """One split: (normalised image tensor, {"boxes" (n, 4) pixels x1y1x2y2 at input size, "labels", "image_id"})."""

    def __init__(self, split: Path, input_size: int, train: bool = False, seed: int = 0) -> None:
        self.annotations = annotation_file(split)
        try:
            coco = json.loads(self.annotations.read_text())
            self.images = sorted(coco["images"], key=lambda im: im["id"])
            categories = sorted(coco["categories"], key=lambda c: c["id"])
            self.category_ids = [c["id"] for c in categories]
            self.category_names = [str(c.get("name", c["id"])) for c in categories]
            per_image: dict[int, list] = {im["id"]: [] for im in self.images}
            for a in coco["annotations"]:
                if not a.get("iscrowd", 0):
                    per_image[a["image_id"]].append(a)
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{self.annotations} is not a COCO instances file: {type(e).__name__}: {e}") from None
        if not self.images or not self.category_ids:
            raise DataError(f"{self.annotations} lists no images or no categories")
        _check_fields(self.annotations, self.images, self.category_ids, per_image)
        self.root, self.input_size, self.per_image = split / "images", input_size, per_image
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        self.by_id = {im["id"]: im for im in self.images}
        self.train, self.seed = train, seed
        self.epoch = 0  # set by the sampler: the crops are a function of (seed, epoch, index)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        from PIL import Image

        info = self.images[i]
        anns = self.per_image[info["id"]]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        labels = torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.long)
        with Image.open(self.root / info["file_name"]) as img:
            img = img.convert("RGB")
            window = self._window(img.size, i) if self.train else (0, 0, img.width, img.height)
            img = img.crop(window).resize((self.input_size, self.input_size), Image.Resampling.BILINEAR)
            array = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        left, top, right, bottom = window
        if self.train:  # SSD's rule: a box stays when its centre is inside the window, clipped to it
            centre = (boxes[:, :2] + boxes[:, 2:]) / 2
            inside = (centre[:, 0] > left) & (centre[:, 0] < right) & (centre[:, 1] > top) & (centre[:, 1] < bottom)
            boxes, labels = boxes[inside], labels[inside]
            boxes = torch.stack([boxes[:, 0].clamp(left, right), boxes[:, 1].clamp(top, bottom),
                                 boxes[:, 2].clamp(left, right), boxes[:, 3].clamp(top, bottom)], 1)  # fmt: skip
        scale = torch.tensor([self.input_size / (right - left), self.input_size / (bottom - top)] * 2)
        boxes = (boxes - torch.tensor([left, top, left, top])) * scale
        target = {"boxes": boxes, "labels": labels, "image_id": torch.tensor(info["id"])}
        return (array - IMAGENET_MEAN) / IMAGENET_STD, target

    def _window(self, size: tuple[int, int], i: int) -> tuple[int, int, int, int]:
        """A random zoom for training (SSD's crop and expand): a window of 0.6 to 1.4 times the image
        (outside the image, black) at a random place, drawn from (seed, epoch, index)."""
        gen = sample_generator(self.seed, self.epoch, i)
        scale, fx, fy = (0.6 + 0.8 * torch.rand(3, generator=gen)).tolist()
        w, h = round(size[0] * scale), round(size[1] * scale)
        left, top = round((fx - 0.6) / 0.8 * (size[0] - w)), round((fy - 0.6) / 0.8 * (size[1] - h))
        return left, top, left + w, top + h

    def to_coco(self, image_id: int, prediction: dict[str, Tensor]) -> list[dict]:
        """A prediction at input size as COCO results: the image's own pixels, category ids, xywh."""
        info = self.by_id[image_id]
        sx, sy = info["width"] / self.input_size, info["height"] / self.input_size
        boxes = prediction["boxes"].detach().cpu().double() * torch.tensor([sx, sy, sx, sy], dtype=torch.float64)
        scores, labels = prediction["scores"].tolist(), prediction["labels"].tolist()
        return [
            {
                "image_id": image_id,
                "category_id": self.category_ids[int(label) - 1],
                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                "score": float(score),
            }
            for b, score, label in zip(boxes.tolist(), scores, labels, strict=True)
        ]


def _check_fields(path: Path, images: list[dict], category_ids: list, per_image: dict[int, list]) -> None:
    """What reading an image or scoring it needs, checked before training rather than failing inside it."""
    lacking = sorted({k for im in images for k in ("file_name", "width", "height") if k not in im})
    if lacking:
        raise DataError(f"{path}: images without {', '.join(lacking)} (COCO requires them)")
    known = set(category_ids)
    for anns in per_image.values():
        for a in anns:
            if a.get("category_id") not in known or len(a.get("bbox", ())) != 4:
                raise DataError(f"{path}: annotation {a.get('id')} has no listed category or no [x, y, w, h] bbox")


def collate(batch: list[tuple[Tensor, dict]]) -> tuple[Tensor, list[dict]]:
    images, targets = zip(*batch, strict=True)
    return torch.stack(images), list(targets)


def coco_folders(root: Path, input_size: int, batch_size: int, seed: int = 0, feed: Feed | None = None) -> Loaders:
    root = Path(root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(
                f"{root} needs train/ and val/ folders (each images/ + instances_*.json); {split}/ is missing"
            )
    train, val = CocoFolder(root / "train", input_size, True, seed), CocoFolder(root / "val", input_size)
    if train.category_ids != val.category_ids:
        raise DataError(f"{root}: train/ and val/ list different categories")
    return Loaders(
        train_loader(train, batch_size, seed, feed, collate),
        DataLoader(val, batch_size, collate_fn=collate, num_workers=(feed or Feed()).workers),
        num_classes=len(train.category_ids),
        input_size=input_size,
    )
