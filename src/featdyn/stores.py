"""Zarr v3 activation stores: one group per (model, dataset, epoch), one array per layer.

Each array is (n_probe, C, H, W), chunked along the first axis like the extraction batch. Group
attributes record what the activations are of (layers, checkpoint hash, probe-set hash, dtype,
image size), and :func:`open_store` checks them before any comparison. Stores are written under a
temporary name and renamed when complete, so a killed job never leaves one that looks finished.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import zarr
import zarr.codecs

from . import FeatdynError, __version__
from .atomic import atomic_path

FLOAT16_MAX = float(np.finfo(np.float16).max)
STORE_FORMAT = 1


def array_name(layer: str) -> str:
    """Zarr node name of a layer spec ('@' is not a portable node-name character)."""
    return layer.replace("@", "__call")


def _compressors(codec: str, level: int):
    if codec == "none":
        return None
    if codec == "zstd":
        return [zarr.codecs.ZstdCodec(level=level)]
    raise FeatdynError(f"extraction.codec: unknown codec {codec!r}; expected 'none' or 'zstd'")


class StoreWriter:
    """Write one activation store batch by batch; arrays are created on the first batch.

    Use as a context manager: on a clean exit the metadata is consolidated and the temporary
    directory is renamed to ``path``; on an exception nothing is left at ``path``.
    """

    def __init__(self, path: str | os.PathLike, n: int, layers: Sequence[str], attrs: Mapping,
                 chunk: int, dtype: str = "float32", codec: str = "zstd", level: int = 1) -> None:
        if dtype not in ("float32", "float16"):
            raise FeatdynError(f"extraction.dtype: {dtype!r} is not allowed; expected 'float32' or 'float16'")
        self.path, self.n, self.layers, self.chunk = Path(path), n, list(layers), max(1, min(chunk, n))
        self.dtype, self.compressors = np.dtype(dtype), _compressors(codec, level)
        self.attrs = {"format": STORE_FORMAT, "featdyn_version": __version__, "layers": self.layers,
                      "dtype": dtype, "codec": codec, "n": n, **attrs}
        self._atomic = atomic_path(self.path)
        self.group: zarr.Group | None = None
        self.arrays: dict[str, zarr.Array] = {}

    def __enter__(self) -> StoreWriter:
        tmp = self._atomic.__enter__()
        self.group = zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
        self._tmp = tmp
        return self

    def write(self, start: int, batch: Mapping[str, np.ndarray], labels: np.ndarray, index: np.ndarray) -> None:
        """Write rows [start, start + len) of every layer, plus the probe labels and manifest rows."""
        assert self.group is not None
        if not self.arrays:
            for name, values in (("labels", labels), ("index", index)):
                self.arrays[name] = self.group.create_array(name, shape=(self.n,), chunks=(self.n,),
                                                            dtype="int64", compressors=None, fill_value=-1)
            for layer in self.layers:
                shape = (self.n,) + tuple(batch[layer].shape[1:])
                arr = self.group.create_array(array_name(layer), shape=shape, chunks=(self.chunk,) + shape[1:],
                                              dtype=self.dtype, compressors=self.compressors, fill_value=0)
                arr.attrs.update({"layer": layer, "dims": ["image", "channel", "y", "x"]})
                self.arrays[layer] = arr
        stop = start + len(labels)
        self.arrays["labels"][start:stop] = labels
        self.arrays["index"][start:stop] = index
        for layer in self.layers:
            values = np.asarray(batch[layer])
            if self.dtype == np.float16:
                peak = float(np.abs(values).max(initial=0.0))
                if not np.isfinite(peak) or peak > FLOAT16_MAX:
                    raise FeatdynError(f"layer {layer!r} has values up to {peak:.4g}, outside float16's range "
                                       f"(+-{FLOAT16_MAX:.0f}); use extraction.dtype: float32")
            self.arrays[layer][start:stop] = values.astype(self.dtype, copy=False)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                assert self.group is not None
                self.group.attrs.update(self.attrs | {"complete": True})
                zarr.consolidate_metadata(str(self._tmp))
        finally:
            self._atomic.__exit__(exc_type, exc, tb)


class ActivationStore:
    """A finished activation store, opened read-only, its attributes checked."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FeatdynError(f"activation store {self.path} does not exist")
        try:
            self.group = zarr.open_group(store=str(self.path), mode="r", zarr_format=3)
        except Exception as exc:
            raise FeatdynError(f"cannot open activation store {self.path}: {exc}") from exc
        self.attrs = dict(self.group.attrs)
        if not self.attrs.get("complete") or self.attrs.get("format") != STORE_FORMAT:
            raise FeatdynError(f"activation store {self.path} is incomplete or not a featdyn store")
        self.layers: list[str] = list(self.attrs["layers"])
        self.labels = np.asarray(self.group["labels"][:])
        self.n = int(self.attrs["n"])

    def array(self, layer: str) -> zarr.Array:
        if layer not in self.layers:
            raise FeatdynError(f"activation store {self.path} has no layer {layer!r}; it has {self.layers}")
        return self.group[array_name(layer)]

    def batches(self, layer: str, batch: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (start, block) of ``layer`` along the image axis, one chunk at a time."""
        arr = self.array(layer)
        step = batch or arr.chunks[0]
        for start in range(0, self.n, step):
            yield start, np.asarray(arr[start:start + step])


def open_store(path: str | os.PathLike, expect: Mapping | None = None) -> ActivationStore:
    """Open a store and refuse it unless every ``expect`` attribute matches."""
    store = ActivationStore(path)
    for key, want in (expect or {}).items():
        have = store.attrs.get(key)
        if have != want:
            raise FeatdynError(f"activation store {path}: attribute {key!r} is {have!r}, expected {want!r} "
                               f"(the store was made from another checkpoint, probe set or setting)")
    return store


def check_pair(source: ActivationStore, target: ActivationStore) -> None:
    """Two stores are comparable: same probe set, image size and layers (shapes checked per layer)."""
    for key in ("probe_sha256", "image_size", "layers", "model", "dataset"):
        if source.attrs.get(key) != target.attrs.get(key):
            raise FeatdynError(f"stores {source.path} and {target.path} differ in {key!r}: "
                               f"{source.attrs.get(key)!r} vs {target.attrs.get(key)!r}")
    for layer in source.layers:
        if source.array(layer).shape != target.array(layer).shape:
            raise FeatdynError(f"layer {layer!r} has shape {source.array(layer).shape} in {source.path} "
                               f"but {target.array(layer).shape} in {target.path}")
