"""Datasets: the scikit-learn digits (real images, no download) and ImageNet-style folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from pruning_client.sampling import epoch_loader, sample_generator

MEAN, STD = 0.5, 0.5
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DataError(ValueError):
    """A dataset path or layout that cannot be used."""


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    num_classes: int
    input_size: int


@dataclass
class Feed:
    """How a process draws its training minibatches: its share of the ranks, loader workers, pinned memory."""

    world: int = 1
    rank: int = 0
    workers: int = 0
    pin: bool = False


class _Augment(Dataset):
    """Random shifts (pad + crop) on a tensor dataset; enough to keep a small ResNet honest."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pad: int, seed: int) -> None:
        self.images, self.labels, self.pad, self.seed = images, labels, pad, seed
        self.epoch = 0  # set by the sampler: the shifts are a function of (seed, epoch, index)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = F.pad(self.images[i], [self.pad] * 4)
        gen = sample_generator(self.seed, self.epoch, i)
        dy, dx = torch.randint(0, 2 * self.pad + 1, (2,), generator=gen).tolist()
        h, w = self.images.shape[-2:]
        return img[:, dy : dy + h, dx : dx + w], self.labels[i]


def digits(
    input_size: int = 32, batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0, feed: Feed | None = None
) -> Loaders:
    """scikit-learn's 1,797 8x8 digits, resized to ``input_size`` as 3-channel images, stratified split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0)[:, None]
    images = F.interpolate(images, size=(input_size, input_size), mode="bilinear", align_corners=False)
    images = ((images - MEAN) / STD).repeat(1, 3, 1, 1)
    labels = torch.from_numpy(data.target.astype(np.int64))
    rng = np.random.default_rng(seed)
    val_idx = np.concatenate(
        [
            rng.permutation(np.flatnonzero(data.target == c))[: round(val_fraction * (data.target == c).sum())]
            for c in range(10)
        ]
    )
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    train = _Augment(images[train_idx], labels[train_idx], pad=max(1, input_size // 16), seed=seed)
    val = TensorDataset(images[val_idx], labels[val_idx])
    return Loaders(
        train_loader(train, batch_size, seed, feed),
        DataLoader(val, batch_size=256),
        num_classes=10,
        input_size=input_size,
    )


class ImageFolder(Dataset):
    """``root/<class>/<image>`` as in torchvision, decoded with Pillow; classes are the sorted folder names."""

    def __init__(self, root: Path, classes: list[str], input_size: int, train: bool, seed: int = 0) -> None:
        self.samples = [
            (path, label)
            for label, name in enumerate(classes)
            for path in sorted((root / name).rglob("*"))
            if path.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not self.samples:
            raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
        self.input_size, self.train, self.seed = input_size, train, seed
        self.epoch = 0  # set by the sampler: crops and flips are a function of (seed, epoch, index)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[i]
        with Image.open(path) as img:
            img = img.convert("RGB")
            short = round(self.input_size * 1.14)  # resize 256 -> crop 224, at any size
            scale = short / min(img.size)
            img = img.resize((max(short, round(img.width * scale)), max(short, round(img.height * scale))))
            array = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        h, w = array.shape[1:]
        gen = sample_generator(self.seed, self.epoch, i)
        if self.train:
            top, left = (int(torch.randint(0, d - self.input_size + 1, (1,), generator=gen)) for d in (h, w))
        else:
            top, left = (h - self.input_size) // 2, (w - self.input_size) // 2
        crop = array[:, top : top + self.input_size, left : left + self.input_size]
        if self.train and bool(torch.rand(1, generator=gen) < 0.5):
            crop = crop.flip(2)
        return (crop - IMAGENET_MEAN) / IMAGENET_STD, label


def image_folder(
    root: Path, input_size: int = 224, batch_size: int = 64, seed: int = 0, feed: Feed | None = None
) -> Loaders:
    """An ImageNet-style directory with ``train/`` and ``val/``, one sub-folder per class."""
    root = Path(root)
    train_dir, val_dir = root / "train", root / "val"
    for d in (train_dir, val_dir):
        if not d.is_dir():
            raise DataError(f"{root} needs train/ and val/ folders with one sub-folder per class; {d} is missing")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DataError(f"{train_dir} has {len(classes)} class folders; need at least 2")
    return Loaders(
        train_loader(ImageFolder(train_dir, classes, input_size, True, seed), batch_size, seed, feed),
        DataLoader(ImageFolder(val_dir, classes, input_size, False), batch_size, num_workers=(feed or Feed()).workers),
        num_classes=len(classes),
        input_size=input_size,
    )


def train_loader(dataset: Dataset, batch: int, seed: int, feed: Feed | None, collate=None) -> DataLoader:
    """This process's share (``feed``) of a seeded per-epoch order of ``dataset`` (``sampling``)."""
    feed = feed or Feed()
    if len(dataset) < batch * feed.world:  # type: ignore[arg-type]
        raise DataError(f"{len(dataset)} training images cannot fill one batch of {batch} per process x {feed.world}")  # type: ignore[arg-type]
    return epoch_loader(dataset, batch, feed.world, feed.rank, seed, feed.workers, feed.pin, collate)


def load_data(spec: str, input_size: int | None, batch_size: int, seed: int = 0, feed: Feed | None = None) -> Loaders:
    """``digits`` (scikit-learn, 32x32 by default) or the path of an ImageNet-style folder (224 by default).

    The training loader is this process's share (``feed``) of a seeded per-epoch order (``sampling``).
    """
    if spec == "digits":
        return digits(input_size or 32, batch_size, seed=seed, feed=feed)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"--data {spec!r}: neither 'digits' nor an existing directory")
    return image_folder(path, input_size or 224, batch_size, seed, feed)
