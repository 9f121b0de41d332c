"""Zarr v3 activation stores: one group per (model, dataset, epoch), one array per layer.

Each array is (n_probe, C, H, W), chunked along the first axis exactly like the extraction batch,
so that every batch writes whole chunks (no read-modify-write) and a reader streams chunk by chunk.
A batch of a large layer is split further along the channel axis (at most ``MAX_CHUNK_BYTES``
per chunk): bounded chunk sizes for any reader, and several chunks that zarr compresses in parallel.

Group attributes record what the activations are of (layers, checkpoint hash, probe-set hash,
dtype, image size), and :func:`open_store` / :func:`open_pair` check them before any comparison.
Stores are written under a temporary name and renamed when complete, so a killed job never leaves
one that looks finished. Any Zarr v3 reader opens them (``zarr.open_group(path, mode="r")``,
xarray via the arrays' dimension names).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr
import zarr.codecs

from . import FeatdynError, __version__
from .atomic import atomic_path

log = logging.getLogger("featdyn.stores")

FLOAT16_MAX = float(np.finfo(np.float16).max)
STORE_FORMAT = 1
DIMS = ("image", "channel", "y", "x")
# Largest uncompressed chunk: big enough that per-chunk overheads vanish, small enough that a
# reader's block and a compression job stay modest (VGG19's first layer is 411 MB per batch of 32).
MAX_CHUNK_BYTES = 16 << 20
# Attributes two stores must share to be compared (besides their layer shapes).
PAIR_KEYS = ("probe_sha256", "image_size", "layers", "model", "dataset", "arch")


def array_name(layer: str) -> str:
    """Zarr node name of a layer spec ('@' is not a portable node-name character)."""
    return layer.replace("@", "__call")


def _compressors(codec: str, level: int):
    if codec == "none":
        return None
    if codec == "zstd":
        return [zarr.codecs.ZstdCodec(level=level)]
    raise FeatdynError(f"extraction.codec: unknown codec {codec!r}; expected 'none' or 'zstd'")


def chunk_shape(shape: Sequence[int], chunk: int, itemsize: int, max_bytes: int = MAX_CHUNK_BYTES) -> tuple[int, ...]:
    """Chunks of an (n, C, H, W) array: ``chunk`` images, and the largest divisor of C channels that
    keeps one chunk within ``max_bytes`` (at least one channel). A divisor: edge chunks along the
    channel axis would be stored padded to full size."""
    n, c, *rest = shape
    per_channel = chunk * math.prod(rest) * itemsize
    fit = max(1, max_bytes // max(per_channel, 1))
    return (chunk, max(d for d in range(1, c + 1) if c % d == 0 and d <= fit), *rest)


def _stale_temporaries(path: Path) -> list[Path]:
    """Temporaries of ``path`` left by a killed writer (atomic_path's naming: .<name>.tmp-*)."""
    return sorted(path.parent.glob(f".{path.name}.tmp-*")) if path.parent.is_dir() else []


def check_float16_range(layer: str, values: np.ndarray) -> None:
    """Refuse values that float16 cannot hold (|x| > 65504, inf, NaN) instead of storing inf."""
    if values.size == 0:
        return
    peak = max(float(values.max()), -float(values.min()))
    if not np.isfinite(peak) or peak > FLOAT16_MAX:
        raise FeatdynError(f"layer {layer!r} has values up to {peak:.4g} in magnitude, outside float16's range "
                           f"(+-{FLOAT16_MAX:.0f}); use extraction.dtype: float32")


class StoreWriter:
    """Write one activation store batch by batch; layer arrays are created on the first batch.

    Use as a context manager: on a clean exit (every row written) the attributes are set, the
    metadata consolidated and the temporary directory renamed to ``path``; on an exception
    nothing is left at ``path`` (a store already there stays as it was). Temporaries of ``path``
    left by a killed writer are removed on entry: one job writes one store at a time.
    """

    def __init__(self, path: str | os.PathLike, n: int, layers: Sequence[str], attrs: Mapping,
                 chunk: int, dtype: str = "float32", codec: str = "zstd", level: int = 1,
                 max_chunk_bytes: int = MAX_CHUNK_BYTES) -> None:
        if dtype not in ("float32", "float16"):
            raise FeatdynError(f"extraction.dtype: {dtype!r} is not allowed; expected 'float32' or 'float16'")
        if n < 1:
            raise FeatdynError(f"activation store {path}: no probe images to store (n={n})")
        if not layers:
            raise FeatdynError(f"activation store {path}: no layers to store")
        self.path, self.n, self.layers, self.chunk = Path(path), n, list(layers), max(1, min(chunk, n))
        self.dtype, self.compressors = np.dtype(dtype), _compressors(codec, level)
        self.max_chunk_bytes = max_chunk_bytes
        self.attrs = {"format": STORE_FORMAT, "featdyn_version": __version__, "layers": self.layers,
                      "dtype": dtype, "codec": codec, "level": level if codec == "zstd" else None,
                      "n": n, "chunk": self.chunk, **attrs}
        self._atomic = atomic_path(self.path)
        self.group: zarr.Group | None = None
        self.arrays: dict[str, zarr.Array] = {}
        self._written = np.zeros(n, dtype=bool)
        self._labels = np.full(n, -1, dtype=np.int64)
        self._index = np.full(n, -1, dtype=np.int64)

    def __enter__(self) -> StoreWriter:
        for stale in _stale_temporaries(self.path):
            log.warning("removing %s, left by an interrupted writer of %s", stale, self.path)
            shutil.rmtree(stale, ignore_errors=True)
        self._tmp = self._atomic.__enter__()
        try:
            self.group = zarr.open_group(store=str(self._tmp), mode="w", zarr_format=3)
        except BaseException as exc:
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise
        # The layers of a batch are written concurrently: zarr then overlaps their compression and
        # file writes (it encodes and writes on its own threads, which release the GIL).
        self._pool = ThreadPoolExecutor(min(8, len(self.layers)), thread_name_prefix="zarr-write")
        return self

    def _create(self, layer: str, shape: tuple[int, ...]) -> zarr.Array:
        assert self.group is not None
        full = (self.n, *shape)
        chunks = chunk_shape(full, self.chunk, self.dtype.itemsize, self.max_chunk_bytes)
        # write_empty_chunks: every chunk is a file (no scan of each chunk for "all zero" first).
        arr = self.group.create_array(array_name(layer), shape=full, chunks=chunks, dtype=self.dtype,
                                      compressors=self.compressors, fill_value=0,
                                      dimension_names=DIMS if len(full) == 4 else None,
                                      config={"write_empty_chunks": True})
        arr.attrs.update({"layer": layer})
        return arr

    def write(self, start: int, batch: Mapping[str, np.ndarray], labels: np.ndarray, index: np.ndarray) -> None:
        """Write rows [start, start + len) of every layer, plus the probe labels and manifest rows."""
        stop = start + len(labels)
        if start < 0 or stop > self.n or len(index) != len(labels):
            raise FeatdynError(f"activation store {self.path}: rows [{start}, {stop}) do not fit n={self.n}")
        missing = [layer for layer in self.layers if layer not in batch]
        if missing:
            raise FeatdynError(f"activation store {self.path}: the batch lacks layers {missing}")
        blocks = {}
        for layer in self.layers:
            values = np.asarray(batch[layer])
            if values.shape[0] != stop - start:
                raise FeatdynError(f"layer {layer!r}: batch of {values.shape[0]} rows for {stop - start} labels")
            if layer not in self.arrays:
                self.arrays[layer] = self._create(layer, values.shape[1:])
            elif self.arrays[layer].shape[1:] != values.shape[1:]:
                raise FeatdynError(f"layer {layer!r}: batch shape {values.shape[1:]} differs from the store's "
                                   f"{self.arrays[layer].shape[1:]}")
            if self.dtype == np.float16:
                check_float16_range(layer, values)
            blocks[layer] = values.astype(self.dtype, copy=False)
        list(self._pool.map(lambda layer: self.arrays[layer].__setitem__(slice(start, stop), blocks[layer]),
                            self.layers))
        # n integers: kept in memory and written once at the end (one small file, not two per batch).
        self._labels[start:stop] = labels
        self._index[start:stop] = index
        self._written[start:stop] = True

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                assert self.group is not None
                if not self._written.all():
                    raise FeatdynError(f"activation store {self.path}: rows {np.flatnonzero(~self._written)[:10]}... "
                                       f"were never written")
                for name, values in (("labels", self._labels), ("index", self._index)):
                    self.group.create_array(name, shape=(self.n,), chunks=(self.n,), dtype="int64",
                                            compressors=None, fill_value=-1, dimension_names=("image",))[:] = values
                self.group.attrs.update(self.attrs | {"complete": True})
                with warnings.catch_warnings():
                    # zarr warns that consolidated metadata is not (yet) in the v3 spec; readers that
                    # ignore it still find every node's own zarr.json.
                    warnings.filterwarnings("ignore", "Consolidated metadata", category=UserWarning)
                    zarr.consolidate_metadata(str(self._tmp))
        except BaseException as err:
            self._pool.shutdown()
            self._atomic.__exit__(type(err), err, err.__traceback__)
            raise
        self._pool.shutdown()
        self._atomic.__exit__(exc_type, exc, tb)


class ActivationStore:
    """A finished activation store, opened read-only, its attributes checked."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            stale = _stale_temporaries(self.path)
            hint = f" (only the interrupted write {stale[0].name} is there)" if stale else ""
            raise FeatdynError(f"activation store {self.path} does not exist{hint}")
        try:
            self.group = zarr.open_group(store=str(self.path), mode="r", zarr_format=3)
        except Exception as exc:
            raise FeatdynError(f"cannot open activation store {self.path}: {exc}") from exc
        self.attrs = dict(self.group.attrs)
        if not self.attrs.get("complete") or self.attrs.get("format") != STORE_FORMAT:
            raise FeatdynError(f"activation store {self.path} is incomplete or not a featdyn store "
                               f"(format {STORE_FORMAT})")
        self.layers: list[str] = list(self.attrs["layers"])
        self.n = int(self.attrs["n"])
        self.labels = np.asarray(self.group["labels"][:])
        self.index = np.asarray(self.group["index"][:])
        for layer in self.layers:
            shape = self.array(layer).shape
            if shape[0] != self.n:
                raise FeatdynError(f"activation store {self.path}: layer {layer!r} has {shape[0]} rows, expected {self.n}")

    def array(self, layer: str) -> zarr.Array:
        if layer not in self.layers:
            raise FeatdynError(f"activation store {self.path} has no layer {layer!r}; it has {self.layers}")
        try:
            return self.group[array_name(layer)]
        except KeyError:
            raise FeatdynError(f"activation store {self.path} lacks the array of layer {layer!r}") from None

    def batches(self, layer: str, batch: int | None = None, prefetch: bool = True) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (start, block) of ``layer`` along the image axis, ``batch`` rows at a time (default:
        one chunk, so every read decodes whole chunks). With ``prefetch`` the next block is read and
        decompressed in a background thread while the caller works on this one (two blocks in memory)."""
        arr = self.array(layer)
        step = batch or arr.chunks[0]
        starts = list(range(0, self.n, step))

        def read(start: int) -> np.ndarray:
            return np.asarray(arr[start:start + step])

        if not prefetch:
            for start in starts:
                yield start, read(start)
            return
        with ThreadPoolExecutor(1, thread_name_prefix="zarr-read") as pool:
            pending = pool.submit(read, starts[0])
            for i, start in enumerate(starts):
                block = pending.result()
                if i + 1 < len(starts):
                    pending = pool.submit(read, starts[i + 1])
                yield start, block


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
    """Two stores are comparable: same probe set (hash, labels, rows), image size, model and layers;
    the same shape per layer."""
    for key in PAIR_KEYS:
        if source.attrs.get(key) != target.attrs.get(key):
            raise FeatdynError(f"stores {source.path} and {target.path} differ in {key!r}: "
                               f"{source.attrs.get(key)!r} vs {target.attrs.get(key)!r}")
    if not (np.array_equal(source.labels, target.labels) and np.array_equal(source.index, target.index)):
        raise FeatdynError(f"stores {source.path} and {target.path} hold different probe images or orders")
    for layer in source.layers:
        if source.array(layer).shape != target.array(layer).shape:
            raise FeatdynError(f"layer {layer!r} has shape {source.array(layer).shape} in {source.path} "
                               f"but {target.array(layer).shape} in {target.path}")


def open_pair(source_path: str | os.PathLike, target_path: str | os.PathLike,
              expect: Mapping | None = None) -> tuple[ActivationStore, ActivationStore]:
    """Open the source store (epoch 0) and a target store, both checked against ``expect`` (e.g.
    :func:`expected_attrs`), and refuse the pair unless they are comparable (:func:`check_pair`)."""
    source = open_store(source_path, {**(expect or {}), "epoch": 0})
    target = open_store(target_path, expect)
    check_pair(source, target)
    return source, target


def expected_attrs(dataset_summary: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None,
                   **attrs) -> dict:
    """Attributes a store must have to belong to this run: the probe-set hash and image size of a
    prepared dataset (its ``dataset.json``), the sha256 of a checkpoint file, and any ``attrs``
    given as is (``model``, ``dataset``, ``epoch``)."""
    out = dict(attrs)
    if dataset_summary is not None:
        try:
            summary = json.loads(Path(dataset_summary).read_text())
            out |= {"probe_sha256": summary["probe_sha256"], "image_size": int(summary["image_size"])}
        except (OSError, ValueError, KeyError) as exc:
            raise FeatdynError(f"cannot read the probe hash from {dataset_summary}: {exc}") from exc
    if checkpoint is not None:
        from .datasets import file_sha256

        out["checkpoint_sha256"] = file_sha256(checkpoint)
    return out
