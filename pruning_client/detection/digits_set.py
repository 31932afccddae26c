"""The embedded detection set: scikit-learn's digits placed on textured canvases, boxes known exactly.

Real images (the 1,797 handwritten digits), no download. Written once, seeded, as a COCO-format
folder (``coco``), so the embedded default and a user's data take the same code path. Training and
validation canvases draw from disjoint halves of the digits.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

VERSION = 1  # bump when the generator changes: the folder name carries it
CANVAS = 128
SIZES = (16, 48)  # digit height in pixels on the canvas
PER_IMAGE = (1, 4)
SPLITS = {"train": 1200, "val": 300}


def default_root() -> Path:
    base = Path(os.environ.get("HALP_DATA_DIR", Path.home() / ".cache" / "halp"))
    return base / f"digits-detection-v{VERSION}"


def ensure(root: Path | None = None, seed: int = 0) -> Path:
    """The set's folder, written on first use (into a temporary folder renamed in place: concurrent
    first uses each write their own and one wins)."""
    root = root or default_root()
    if (root / "val" / "instances_val.json").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".digits-detection-", dir=root.parent))
    try:
        write(scratch, seed)
        try:
            scratch.rename(root)
        except OSError:  # another process finished first
            if not (root / "val" / "instances_val.json").exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return root


def _background(rng: np.random.Generator) -> np.ndarray:
    """Smooth random texture: low-resolution noise upsampled, plus fine grain, in a random tint."""
    from PIL import Image

    coarse = rng.uniform(0, 1, (rng.integers(3, 9),) * 2).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse).resize((CANVAS, CANVAS), Image.Resampling.BICUBIC))
    grain = rng.normal(0, 0.06, (CANVAS, CANVAS))
    tint = rng.uniform(0.2, 0.8, 3)
    base = 0.55 * smooth[..., None] * tint + 0.2 + grain[..., None]
    return np.clip(base, 0, 1)


def _place(canvas: np.ndarray, digit: np.ndarray, rng: np.random.Generator, taken: list) -> list[float] | None:
    """Paste one digit (8x8, 0..16) at a random free spot and scale; its ink's exact box, or None."""
    from PIL import Image

    h = int(rng.integers(SIZES[0], SIZES[1] + 1))
    w = max(8, int(round(h * rng.uniform(0.75, 1.0))))
    ink = np.asarray(Image.fromarray((digit / 16.0).astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR))
    ink = np.clip(ink, 0, 1)
    for _ in range(20):
        y, x = int(rng.integers(0, CANVAS - h + 1)), int(rng.integers(0, CANVAS - w + 1))
        if all(x + w <= tx or tx + tw <= x or y + h <= ty or ty + th <= y for tx, ty, tw, th in taken):
            break
    else:
        return None
    rows, cols = np.flatnonzero(ink.max(1) > 0.15), np.flatnonzero(ink.max(0) > 0.15)
    if not len(rows) or not len(cols):
        return None
    colour = rng.uniform(0, 1, 3)
    region = canvas[y : y + h, x : x + w]
    region[:] = region * (1 - ink[..., None]) + colour * ink[..., None]
    taken.append((x, y, w, h))
    x0, y0 = x + cols[0], y + rows[0]
    return [float(x0), float(y0), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def write(root: Path, seed: int = 0) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    pools = {"train": order[: len(order) // 2], "val": order[len(order) // 2 :]}
    categories = [{"id": d + 1, "name": str(d)} for d in range(10)]
    for split, count in SPLITS.items():
        rng = np.random.default_rng([seed, len(split)])
        (root / split / "images").mkdir(parents=True)
        images, annotations = [], []
        for image_id in range(1, count + 1):
            canvas, taken = _background(rng), []
            for _ in range(int(rng.integers(PER_IMAGE[0], PER_IMAGE[1] + 1))):
                index = int(rng.choice(pools[split]))
                box = _place(canvas, digits.images[index], rng, taken)
                if box is not None:
                    annotations.append({
                        "id": len(annotations) + 1, "image_id": image_id, "category_id": int(digits.target[index]) + 1,
                        "bbox": box, "area": box[2] * box[3], "iscrowd": 0,
                    })  # fmt: skip
            name = f"{image_id:05d}.png"
            Image.fromarray((canvas * 255).astype(np.uint8)).save(root / split / "images" / name)
            images.append({"id": image_id, "file_name": name, "width": CANVAS, "height": CANVAS})
        body = {"images": images, "annotations": annotations, "categories": categories}
        (root / split / f"instances_{split}.json").write_text(json.dumps(body))
