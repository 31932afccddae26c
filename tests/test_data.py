"""ImageNet-style folders (train/<class>/*, val/<class>/*), as real users bring them, built from the digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pruning_client.data import DataError, load_data
from tests.conftest import assert_steps_met_their_budgets, cache_env, halp

CLASSES = ("zero", "one", "two")


def write_folder(root: Path, per_class: dict[str, int]) -> Path:
    """Real images: scikit-learn's digits 0-2 upscaled to 40x48 PNG/JPEG files, one folder per class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            images = digits.images[digits.target == label][:count]
            for i, img in enumerate(images):
                pixels = Image.fromarray((img * 255 / 16).astype(np.uint8)).resize((40, 48))
                if i % 3 == 0:  # RGBA with an upper-case suffix: still read, as RGB
                    pixels.convert("RGBA").save(folder / f"{i}.PNG")
                elif i % 3 == 1:
                    pixels.convert("RGB").save(folder / f"{i}.jpg", quality=95)
                else:
                    pixels.save(folder / f"{i}.png")
            (folder / "notes.txt").write_text("not an image")
    return root


def test_a_folder_loads_with_its_classes_sizes_and_a_fixed_validation_crop(tmp_path):
    root = write_folder(tmp_path / "data", {"train": 12, "val": 5})
    data = load_data(str(root), 32, batch_size=8)
    assert data.num_classes == 3 and data.input_size == 32
    assert len(data.train.dataset) == 36 and len(data.val.dataset) == 15  # notes.txt skipped
    x, y = next(iter(data.train))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and set(y.tolist()) <= {0, 1, 2}
    first = torch.cat([x for x, _ in data.val])
    again = torch.cat([x for x, _ in data.val])
    assert torch.equal(first, again)  # validation is a centre crop, no randomness
    assert sorted({int(y) for _, y in data.val.dataset}) == [0, 1, 2]


@pytest.mark.parametrize(
    "layout,message",
    [
        ({"train": 3}, "needs train/ and val/ folders"),
        ({"train": 0, "val": 2}, "no images"),
    ],
)
def test_bad_folders_are_clear_errors(tmp_path, layout, message):
    root = write_folder(tmp_path / "data", layout)
    with pytest.raises(DataError, match=message):
        load_data(str(root), 32, 8)


def test_one_class_and_a_missing_path_are_clear_errors(tmp_path):
    (tmp_path / "one" / "train" / "a").mkdir(parents=True)
    (tmp_path / "one" / "val" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="need at least 2"):
        load_data(str(tmp_path / "one"), 32, 8)
    with pytest.raises(DataError, match="neither 'digits' nor an existing directory"):
        load_data(str(tmp_path / "missing"), 32, 8)


@pytest.mark.slow
def test_halp_prune_takes_an_image_folder(shared_services, tmp_path):
    service = shared_services[0]  # 32x32 inputs: ResNet-20's tables of the digits runs, but a 3-class head
    root = write_folder(tmp_path / "data", {"train": 40, "val": 10})
    out = tmp_path / "run"
    result = halp(
        "prune", "--model", "resnet20", "--target", service.url, "--data", str(root), "--input-size", "32",
        "--pretrain-epochs", "1", "--steps", "2", "--epochs", "1", "--latency-ratio", "0.7", "--out", str(out),
        "--no-calibrate",  # budgets in table units: whether a step can meet one is not left to timing noise
        env=cache_env(tmp_path, "cache"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # the budget as the tables price it; the measured check is test_workflow's, on a quiet host
    assert_steps_met_their_budgets(json.loads((out / "report.json").read_text()))
    model = torch.load(out / "model.pt", weights_only=False)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)  # one output per class folder

    without_weights = halp("prune", "--target", service.url, "--data", str(root), "--out", str(tmp_path / "x"))
    assert without_weights.returncode == 2 and "--weights" in without_weights.stderr
