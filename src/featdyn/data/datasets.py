"""Class-per-folder image trees: scan, split, choose the probe set, and decode once into a cache.

A dataset is either one tree (split here, seeded and class-stratified) or a train/test pair of
trees (their own split). The prepare step writes

- a split manifest (CSV: index, path, label, class, split, probe), one row per image, and
- a uint8 cache (N, S, S, 3) aligned with the manifest rows, every image decoded and resized once,
  so that training and extraction never decode JPEGs again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from featdyn import FeatdynError
from featdyn.atomic import atomic_path, write_text
from featdyn.data.prefetch import ordered_map
from featdyn.progress import Progress
from featdyn.spec.fingerprints import IMAGE_EXTENSIONS

log = logging.getLogger("featdyn.data.datasets")

MANIFEST_COLUMNS = ["index", "path", "label", "class", "split", "probe"]


def _class_folders(root: Path, what: str) -> list[Path]:
    if not root.is_dir():
        raise FeatdynError(f"{what}: folder {root} does not exist (expected a class-per-folder image tree)")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise FeatdynError(f"{what}: folder {root} has no class sub-folders (expected <root>/<class>/<image>)")
    return classes


def check_classes(classes: Sequence[str], root: str | os.PathLike, what: str = "dataset") -> None:
    """A classifier needs at least two classes: with one, training reaches loss 0 and 100 % accuracy
    and every table looks fine while meaning nothing."""
    if len(classes) < 2:
        raise FeatdynError(f"{what}: folder {root} has {len(classes)} class folder ({', '.join(classes)}); "
                           f"fine-tuning a classifier needs at least two classes")


def _images_in(folder: Path) -> Iterator[Path]:
    """Image files under ``folder`` (any depth), hidden files and folders skipped, unordered."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                yield Path(dirpath) / f


def _no_images(cdir: Path, what: str) -> FeatdynError:
    return FeatdynError(f"{what}: class folder {cdir} holds no images "
                        f"(expected files ending in {', '.join(sorted(IMAGE_EXTENSIONS))})")


def scan_tree(root: str | os.PathLike, what: str = "dataset") -> dict[str, list[Path]]:
    """Return ``{class name: sorted image paths}`` for a class-per-folder tree.

    Raises FeatdynError naming the path when the root is missing, has no class folders, or a
    class folder holds no image files.
    """
    tree: dict[str, list[Path]] = {}
    for cdir in _class_folders(Path(root), what):
        files = sorted(_images_in(cdir))
        if not files:
            raise _no_images(cdir, what)
        tree[cdir.name] = files
    return tree


def check_tree(root: str | os.PathLike, what: str = "dataset") -> list[str]:
    """The class names of a tree, with the checks of :func:`scan_tree` but without listing every
    image (it stops at each class's first image): cheap enough to run at every workflow start,
    even for 100,000 images on a network file system."""
    classes = _class_folders(Path(root), what)
    for cdir in classes:
        if next(_images_in(cdir), None) is None:
            raise _no_images(cdir, what)
    return [c.name for c in classes]


def check_training_tree(root: str | os.PathLike, what: str = "dataset") -> list[str]:
    """:func:`check_tree` for a tree that training reads (a one-tree dataset, or a train tree): it
    must also hold at least two classes."""
    names = check_tree(root, what)
    check_classes(names, root, what)
    return names


def choose_classes(classes: Sequence[str], n: int | None, seed: int) -> list[str]:
    """Draw ``n`` of ``classes`` with ``seed``; return them in sorted (stable) order."""
    classes = sorted(classes)
    if n is None or n >= len(classes):
        if n is not None and n > len(classes):
            raise FeatdynError(f"asked for {n} classes but the dataset has only {len(classes)}")
        return classes
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(classes, size=n, replace=False).tolist())


@dataclass(frozen=True)
class SplitSpec:
    """How to split and probe a dataset (all seeded)."""

    test_fraction: float = 0.2
    split_seed: int = 0
    probe_per_class: int = 8
    probe_seed: int = 0
    n_classes: int | None = None
    class_seed: int = 0


def class_rng(seed: int, cls: str) -> np.random.Generator:
    """A generator for one class, keyed by (seed, class name): a class's split and probe do not
    depend on which other classes the dataset holds or draws."""
    return np.random.default_rng([seed, zlib.crc32(cls.encode())])


def build_manifest(tree: dict[str, list[Path]], spec: SplitSpec,
                   test_tree: dict[str, list[Path]] | None = None) -> pd.DataFrame:
    """Manifest of every image: its split, integer label and probe flag.

    With one tree, each class is split on its own (stratified) with ``spec.split_seed``, at least
    one image on each side. With ``test_tree`` the trees are the train and test splits; a class in
    one but not the other is an error. The probe set is ``spec.probe_per_class`` test images per
    class, drawn with ``spec.probe_seed``; it does not depend on the model or the epoch.
    """
    classes = choose_classes(list(tree), spec.n_classes, spec.class_seed)
    rows: list[tuple[str, str, str]] = []
    if test_tree is None:
        if not 0.0 < spec.test_fraction < 1.0:
            raise FeatdynError(f"split.test_fraction must lie strictly between 0 and 1, got {spec.test_fraction}")
        for cls in classes:
            files = tree[cls]
            if len(files) < 2:
                raise FeatdynError(f"class {cls!r} has {len(files)} image(s) ({files[0].parent}); "
                                   f"a split needs at least 2")
            n_test = min(max(1, round(len(files) * spec.test_fraction)), len(files) - 1)
            test_idx = set(class_rng(spec.split_seed, cls).permutation(len(files))[:n_test].tolist())
            rows += [(str(f), cls, "test" if i in test_idx else "train") for i, f in enumerate(files)]
    else:
        missing_test = [c for c in classes if c not in test_tree]
        if missing_test:
            raise FeatdynError(f"classes present in the training tree but not in the test tree "
                               f"{_root_of(test_tree)}: {missing_test}")
        extra = sorted(set(test_tree) - set(tree))
        if extra and spec.n_classes is None:
            raise FeatdynError(f"classes present in the test tree but not in the training tree "
                               f"{_root_of(tree)}: {extra}")
        for cls in classes:
            rows += [(str(f), cls, "train") for f in tree[cls]]
            rows += [(str(f), cls, "test") for f in test_tree[cls]]
    df = pd.DataFrame(rows, columns=["path", "class", "split"])
    df["label"] = df["class"].map({c: i for i, c in enumerate(classes)}).astype(int)
    df["probe"] = False
    for cls in classes:
        test_rows = df.index[(df["class"] == cls) & (df["split"] == "test")].to_numpy()
        if len(test_rows) < spec.probe_per_class:
            raise FeatdynError(f"class {cls!r} has {len(test_rows)} test images, fewer than "
                               f"probe.per_class={spec.probe_per_class}")
        chosen = class_rng(spec.probe_seed, cls).choice(test_rows, spec.probe_per_class, replace=False)
        df.loc[np.sort(chosen), "probe"] = True
    df.insert(0, "index", np.arange(len(df)))
    return df[MANIFEST_COLUMNS]


def _root_of(tree: dict[str, list[Path]]) -> Path:
    """The folder that holds a scanned tree's class folders."""
    cls, files = next(iter(tree.items()))
    path = files[0].parent
    while path.name != cls:
        path = path.parent
    return path.parent


# Pillow modes whose convert("RGB") is not faithful: 16-bit greyscale is clipped at 255 (an all-white
# image), 32-bit integer and float pixels have no range to scale from.
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
REFUSED_MODES = frozenset({"I", "F"})


def to_rgb(im: Image.Image, path: str | os.PathLike) -> Image.Image:
    """An RGB version of ``im`` that keeps its content: 16-bit greyscale is scaled to 8 bits
    (round(v * 255 / 65535)); modes without a known range are refused naming the file. Pillow
    already reduces 16-bit RGB(A) and grey+alpha PNGs to 8 bits correctly."""
    if im.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(im).astype(np.uint32)
        return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), mode="L").convert("RGB")
    if im.mode in REFUSED_MODES:
        raise FeatdynError(f"image {path} has Pillow mode {im.mode!r} (32-bit integer or float pixels): it cannot be "
                           f"converted to 8-bit RGB faithfully; convert it to 8- or 16-bit first")
    return im.convert("RGB")


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode one image to RGB (:func:`to_rgb`) and resize it straight to ``size`` x ``size`` (no
    crop), as uint8."""
    try:
        with Image.open(path) as im:
            im = to_rgb(im, path).resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise FeatdynError(f"cannot read image {path}: {exc} (corrupt, truncated or not an image)") from exc


def build_cache(paths: Sequence[str], size: int, out: str | os.PathLike, threads: int = 1) -> None:
    """Decode and resize every image once into a uint8 ``.npy`` of shape (N, size, size, 3).

    Filled through a memory map (memory does not grow with N) under a temporary name, renamed when
    complete. Decoding runs on ``threads`` threads (PIL releases the GIL while decoding), a bounded
    number of images ahead; the first unreadable image stops it with the image's name.
    """
    progress = Progress(log, "decode", len(paths), every_s=10.0)
    with atomic_path(out, suffix=".npy") as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
        decoded = ordered_map(lambda p: load_image(p, size), paths, workers=threads, ahead=4 * max(1, threads))
        for i, img in enumerate(decoded):
            arr[i] = img
            progress.update(i + 1, 1)
        arr.flush()
        del arr


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check a split manifest written by :func:`write_manifest`."""
    try:
        df = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise FeatdynError(f"cannot read manifest {path}: {exc}") from exc
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise FeatdynError(f"manifest {path} lacks columns {missing}; expected {MANIFEST_COLUMNS}")
    df["probe"] = df["probe"].astype(bool)
    return df


def prepare(tree_root: str | os.PathLike, out_dir: str | os.PathLike, size: int, spec: SplitSpec,
            test_root: str | os.PathLike | None = None, threads: int = 1, name: str = "dataset") -> dict:
    """Scan, split, probe and cache one dataset into ``out_dir``; return its summary."""
    out_dir = Path(out_dir)
    tree = scan_tree(tree_root, f"dataset {name!r} ({'train' if test_root else 'images'})")
    test_tree = scan_tree(test_root, f"dataset {name!r} (test)") if test_root else None
    df = build_manifest(tree, spec, test_tree)
    check_classes(sorted(df["class"].unique()), tree_root, f"dataset {name!r}")
    log.info("%s: %d classes, %d train, %d test, %d probe images", name, df["label"].nunique(),
             (df["split"] == "train").sum(), (df["split"] == "test").sum(), df["probe"].sum())
    build_cache(df["path"].tolist(), size, out_dir / "cache.npy", threads=threads)
    write_manifest(df, out_dir / "manifest.csv")
    classes = df.drop_duplicates("label").sort_values("label")["class"].tolist()
    summary = {"name": name, "image_size": size, "classes": classes,
               "n_train": int((df["split"] == "train").sum()), "n_test": int((df["split"] == "test").sum()),
               "n_probe": int(df["probe"].sum()),
               "probe_sha256": probe_hash(df)}
    write_text(out_dir / "dataset.json", json.dumps(summary, indent=2))
    return summary


def probe_hash(df: pd.DataFrame) -> str:
    """A hash that identifies the probe set (which images, in which order, with which labels)."""
    probe = df[df["probe"]][["index", "path", "label"]]
    return hashlib.sha256(probe.to_csv(index=False).encode()).hexdigest()


class ImageCache:
    """The prepared dataset: manifest plus the memory-mapped uint8 image cache."""

    def __init__(self, data_dir: str | os.PathLike) -> None:
        data_dir = Path(data_dir)
        self.manifest = read_manifest(data_dir / "manifest.csv")
        cache_path = data_dir / "cache.npy"
        try:
            self.images = np.load(cache_path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise FeatdynError(f"cannot read image cache {cache_path}: {exc}") from exc
        if self.images.ndim != 4 or self.images.shape[0] != len(self.manifest) or self.images.shape[3] != 3:
            raise FeatdynError(f"image cache {cache_path} has shape {self.images.shape}, expected "
                               f"({len(self.manifest)}, S, S, 3) to match {data_dir / 'manifest.csv'}")
        self.labels = self.manifest["label"].to_numpy(dtype=np.int64)
        self.num_classes = int(self.labels.max()) + 1
        self.classes = self.manifest.drop_duplicates("label").sort_values("label")["class"].tolist()

    def indices(self, split: str) -> np.ndarray:
        """Row indices of ``split`` ('train', 'test' or 'probe'), in manifest order."""
        if split == "probe":
            return np.flatnonzero(self.manifest["probe"].to_numpy())
        return np.flatnonzero((self.manifest["split"] == split).to_numpy())

    def probe_sha256(self) -> str:
        return probe_hash(self.manifest)
