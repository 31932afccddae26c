"""Datasets: the scikit-learn digits (real images, no download) and ImageNet-style folders."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

MEAN, STD = 0.5, 0.5


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    num_classes: int
    input_size: int


class _Augment(Dataset):
    """Random shifts (pad + crop) on a tensor dataset; enough to keep a small ResNet honest."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pad: int, seed: int) -> None:
        self.images, self.labels, self.pad = images, labels, pad
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = F.pad(self.images[i], [self.pad] * 4)
        dy, dx = torch.randint(0, 2 * self.pad + 1, (2,), generator=self.gen).tolist()
        h, w = self.images.shape[-2:]
        return img[:, dy : dy + h, dx : dx + w], self.labels[i]


def digits(input_size: int = 32, batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0) -> Loaders:
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
    gen = torch.Generator().manual_seed(seed)
    return Loaders(
        DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen, drop_last=True),
        DataLoader(val, batch_size=256),
        num_classes=10,
        input_size=input_size,
    )
