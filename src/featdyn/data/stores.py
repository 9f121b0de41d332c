"""Zarr v3 activation stores: one group per (model, dataset, epoch), one array per layer.

Each layer is stored in one canonical layout (store format 3; featdyn.nets.layouts decides it from
the model and the ``layouts`` attribute records it): maps channels-first (n_probe, C, H, W), whatever
the model computed (Swin's stages are channels-last); a token layer (ViT) as its patch grid
(n_probe, C, h, w) plus its prefix (class) tokens in the array ``<layer>__prefix`` (n_probe, C, k);
a vector layer (n_probe, C). Each array is chunked along the first axis exactly like the extraction batch,
so that every batch writes whole chunks (no read-modify-write) and a reader streams chunk by chunk.
A batch of a large layer is split further along the channel axis (at most ``MAX_CHUNK_BYTES``
per chunk): bounded chunk sizes for any reader, and several chunks that zarr compresses in parallel.

Group attributes record what the activations are of (layers, checkpoint hash, probe-set hash,
epoch, model, dataset, dtype, image size), and :func:`open_store` / :func:`open_pair` check them
before any comparison. Stores are written under a temporary name and renamed when complete, so a
killed job never leaves one that looks finished. Any Zarr v3 reader opens them
(``zarr.open_group(path, mode="r")``, xarray via the arrays' dimension names).

Integrity (store format 2): every chunk ends with a crc32c checksum (the Zarr v3 ``crc32c`` codec,
after zstd when compressed), and a reader checks that every chunk file of every array exists
before it reads anything. Zarr itself reads a missing chunk as the fill value (zeros) and garbage
bytes of an uncompressed chunk as numbers; here both are errors that name the chunk file. Values
are checked finite when written (NaN and inf are refused, naming the layer).
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr
import zarr.codecs

from featdyn import FeatdynError, __version__
from featdyn.atomic import atomic_path, remove_stale_temporaries, stale_temporaries
from featdyn.finite import describe_nonfinite
from featdyn.spec.layouts import prefix_arrays

log = logging.getLogger("featdyn.data.stores")

FLOAT16_MAX = float(np.finfo(np.float16).max)
# 2: a crc32c checksum ends every chunk (format 1 stores had none and are refused).
# 3: every layer in its canonical layout, recorded in the ``layouts`` attribute (featdyn.nets.layouts):
#    format 2 stored channels-last (Swin) maps as if channels-first and could not hold token layers.
STORE_FORMAT = 3
DIMS = ("image", "channel", "y", "x")
# Largest uncompressed chunk: big enough that per-chunk overheads vanish, small enough that a
# reader's block and a compression job stay modest (VGG19's first layer is 411 MB per batch of 32).
MAX_CHUNK_BYTES = 16 << 20
# Attributes two stores must share to be compared (besides their layer shapes).
PAIR_KEYS = ("probe_sha256", "image_size", "layers", "model", "dataset", "arch")
# How a user recomputes one damaged or stale store (README: "When something goes wrong").
_RECOMPUTE = "recompute it with `snakemake -f {path}`, then run `snakemake` for what reads it"


def array_name(layer: str) -> str:
    """Zarr node name of a layer spec ('@' is not a portable node-name character)."""
    return layer.replace("@", "__call")


def _compressors(codec: str, level: int) -> list:
    """The bytes-to-bytes codec chain: optional zstd, then a crc32c checksum of the stored bytes
    (4 bytes per chunk; google-crc32c, a zarr dependency, checks ~GB/s)."""
    if codec == "none":
        return [zarr.codecs.Crc32cCodec()]
    if codec == "zstd":
        return [zarr.codecs.ZstdCodec(level=level), zarr.codecs.Crc32cCodec()]
    raise FeatdynError(f"extraction.codec: unknown codec {codec!r}; expected 'none' or 'zstd'")


def chunk_shape(shape: Sequence[int], chunk: int, itemsize: int, max_bytes: int = MAX_CHUNK_BYTES) -> tuple[int, ...]:
    """Chunks of an (n, C, H, W) array: ``chunk`` images, and the largest divisor of C channels that
    keeps one chunk within ``max_bytes`` (at least one channel). A divisor: edge chunks along the
    channel axis would be stored padded to full size."""
    n, c, *rest = shape
    per_channel = chunk * math.prod(rest) * itemsize
    fit = max(1, max_bytes // max(per_channel, 1))
    return (chunk, max(d for d in range(1, c + 1) if c % d == 0 and d <= fit), *rest)


def check_activations(layer: str, values: np.ndarray, dtype: np.dtype, where: str = "") -> None:
    """Refuse NaN and inf (a diverged model's activations are not data), and values that ``dtype``
    cannot hold (float16: |x| > 65504 would be stored as inf)."""
    if values.size == 0:
        return
    lo, hi = float(values.min()), float(values.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise FeatdynError(f"layer {layer!r}{where} has non-finite activations: {describe_nonfinite(values)} "
                           f"(the checkpoint's weights or the model diverged; nothing was stored)")
    peak = max(hi, -lo)
    if dtype == np.float16 and peak > FLOAT16_MAX:
        raise FeatdynError(f"layer {layer!r}{where} has values up to {peak:.4g} in magnitude, outside float16's "
                           f"range (+-{FLOAT16_MAX:.0f}); use extraction.dtype: float32")


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
        # the arrays written per batch: the layers, then the prefix tokens of token layers
        self.names = self.layers + prefix_arrays(attrs.get("layouts") or {})
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
        remove_stale_temporaries(self.path)
        self._tmp = self._atomic.__enter__()
        try:
            self.group = zarr.open_group(store=str(self._tmp), mode="w", zarr_format=3)
        except BaseException as exc:
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise
        # The layers of a batch are written concurrently: zarr then overlaps their compression and
        # file writes (it encodes and writes on its own threads, which release the GIL).
        self._pool = ThreadPoolExecutor(min(8, len(self.names)), thread_name_prefix="zarr-write")
        return self

    def _create(self, layer: str, shape: tuple[int, ...]) -> zarr.Array:
        assert self.group is not None
        full = (self.n, *shape)
        chunks = chunk_shape(full, self.chunk, self.dtype.itemsize, self.max_chunk_bytes)
        # write_empty_chunks: every chunk is a file (no scan of each chunk for "all zero" first).
        arr = self.group.create_array(array_name(layer), shape=full, chunks=chunks, dtype=self.dtype,
                                      compressors=self.compressors, fill_value=0,
                                      dimension_names=DIMS if len(full) == 4 else
                                      ("image", "channel", "token") if len(full) == 3 else None,
                                      config={"write_empty_chunks": True})
        arr.attrs.update({"layer": layer})
        return arr

    def write(self, start: int, batch: Mapping[str, np.ndarray], labels: np.ndarray, index: np.ndarray) -> None:
        """Write rows [start, start + len) of every layer, plus the probe labels and manifest rows."""
        stop = start + len(labels)
        if start < 0 or stop > self.n or len(index) != len(labels):
            raise FeatdynError(f"activation store {self.path}: rows [{start}, {stop}) do not fit n={self.n}")
        missing = [layer for layer in self.names if layer not in batch]
        if missing:
            raise FeatdynError(f"activation store {self.path}: the batch lacks layers {missing}")
        blocks = {}
        for layer in self.names:
            values = np.asarray(batch[layer])
            if values.shape[0] != stop - start:
                raise FeatdynError(f"layer {layer!r}: batch of {values.shape[0]} rows for {stop - start} labels")
            if layer not in self.arrays:
                self.arrays[layer] = self._create(layer, values.shape[1:])
            elif self.arrays[layer].shape[1:] != values.shape[1:]:
                raise FeatdynError(f"layer {layer!r}: batch shape {values.shape[1:]} differs from the store's "
                                   f"{self.arrays[layer].shape[1:]}")
            check_activations(layer, values, self.dtype, f" (probe rows {start}-{stop - 1}, store {self.path})")
            blocks[layer] = values.astype(self.dtype, copy=False)
        list(self._pool.map(lambda layer: self.arrays[layer].__setitem__(slice(start, stop), blocks[layer]),
                            self.names))
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
    """A finished activation store, opened read-only: its attributes checked, every chunk file of
    every array present (:meth:`check_chunks`), every chunk's checksum verified as it is read."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            stale = stale_temporaries(self.path)
            hint = f" (only the interrupted write {stale[0].name} is there)" if stale else ""
            raise FeatdynError(f"activation store {self.path} does not exist{hint}")
        try:
            self.group = zarr.open_group(store=str(self.path), mode="r", zarr_format=3)
        except Exception as exc:
            raise FeatdynError(f"cannot open activation store {self.path}: {exc}") from exc
        self.attrs = dict(self.group.attrs)
        if not self.attrs.get("complete") or "format" not in self.attrs:
            raise FeatdynError(f"activation store {self.path} is incomplete or not a featdyn store "
                               f"(format {STORE_FORMAT})")
        if self.attrs["format"] != STORE_FORMAT:
            raise FeatdynError(f"activation store {self.path} has store format {self.attrs['format']}, this featdyn "
                               f"reads format {STORE_FORMAT} (every layer in its canonical layout, chunks "
                               f"with crc32c checksums): remove it "
                               f"(rm -r {self.path}) and rerun, or rerun its job with --forcerun extract")
        try:
            self.layers: list[str] = list(self.attrs["layers"])
            self.n = int(self.attrs["n"])
            self.layouts: dict[str, dict] = dict(self.attrs.get("layouts") or {})
            self.parts: list[str] = self.layers + prefix_arrays(self.layouts)
        except (KeyError, TypeError, ValueError) as exc:
            raise FeatdynError(f"activation store {self.path}: bad or missing attribute {exc}") from exc
        for layer in self.layers:
            shape = self.array(layer).shape
            if shape[0] != self.n:
                raise FeatdynError(f"activation store {self.path}: layer {layer!r} has {shape[0]} rows, expected {self.n}")
        self.check_chunks()
        self.labels = self._read_all("labels")
        self.index = self._read_all("index")

    def _node(self, name: str) -> zarr.Array:
        try:
            return self.group[name]
        except KeyError:
            raise FeatdynError(f"activation store {self.path} lacks the array {name!r}") from None

    def _read_all(self, name: str) -> np.ndarray:
        arr = self._node(name)
        try:
            return np.asarray(arr[:])
        except Exception as exc:  # noqa: BLE001 - any decoding failure: name the file
            raise FeatdynError(f"activation store {self.path}: array {name!r} is unreadable ({exc}): its chunk "
                               f"{self.path / name / arr.metadata.encode_chunk_key((0,))} is corrupt; "
                               f"{_RECOMPUTE.format(path=self.path)}") from exc

    def check_chunks(self) -> None:
        """Every chunk file that the arrays' chunk grids call for exists (zarr would read a missing
        one as zeros). One directory listing per array."""
        for name in [array_name(layer) for layer in self.parts] + ["labels", "index"]:
            arr = self._node(name)
            folder = self.path / name
            present = {str(Path(dirpath, f).relative_to(folder)) for dirpath, _, files in os.walk(folder)
                       for f in files if f != "zarr.json"}
            for coords in np.ndindex(*arr.cdata_shape):
                key = arr.metadata.encode_chunk_key(coords)
                if key not in present:
                    what = f"layer {arr.attrs.get('layer', name)!r}" if name not in ("labels", "index") else name
                    raise FeatdynError(f"activation store {self.path}: chunk file {folder / key} of {what} is missing "
                                       f"(the store is damaged; {_RECOMPUTE.format(path=self.path)})")

    def layout(self, layer: str) -> dict:
        """The layer's layout record (featdyn.nets.layouts.decide): layout, prefix tokens, grid."""
        return dict(self.layouts.get(layer) or {"layout": "NCHW", "prefix": 0})

    def array(self, layer: str) -> zarr.Array:
        if layer not in self.parts:
            raise FeatdynError(f"activation store {self.path} has no layer {layer!r}; it has {self.layers}")
        try:
            return self.group[array_name(layer)]
        except KeyError:
            raise FeatdynError(f"activation store {self.path} lacks the array of layer {layer!r}") from None

    def _where(self, layer: str, start: int, stop: int) -> str:
        return (f"activation store {self.path}, layer {layer!r}, epoch {self.attrs.get('epoch')}, "
                f"probe rows {start}-{stop - 1}")

    def _corrupt_chunk(self, arr: zarr.Array, start: int, stop: int) -> str:
        """The first chunk file of rows [start, stop) that fails to decode (the error path only)."""
        first, last = start // arr.chunks[0], (stop - 1) // arr.chunks[0]
        for coords in np.ndindex(last - first + 1, *arr.cdata_shape[1:]):
            coords = (coords[0] + first, *coords[1:])
            try:
                arr.blocks[coords]
            except Exception:  # noqa: BLE001 - this is the one
                return str(self.path / arr.path / arr.metadata.encode_chunk_key(coords))
        return "(none of them alone)"

    def read(self, layer: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of ``layer``, every chunk's checksum verified; a failure names the store,
        the layer, the epoch and the chunk file."""
        arr = self.array(layer)
        try:
            block = np.asarray(arr[start:stop])
        except Exception as exc:  # noqa: BLE001 - checksum mismatch, zstd error, truncated file...
            raise FeatdynError(f"{self._where(layer, start, stop)}: chunk {self._corrupt_chunk(arr, start, stop)} "
                               f"is corrupt ({type(exc).__name__}: {exc}); {_RECOMPUTE.format(path=self.path)}") from exc
        # No finite check here: the writer refused NaN and inf, the checksums prove the bytes are
        # the writer's, and the statistics check their inputs anyway (naming store, layer, epoch).
        return block

    def batches(self, layer: str, batch: int | None = None, prefetch: bool = True) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (start, block) of ``layer`` along the image axis, ``batch`` rows at a time (default:
        one chunk, so every read decodes whole chunks). With ``prefetch`` the next block is read and
        decompressed in a background thread while the caller works on this one (two blocks in memory)."""
        arr = self.array(layer)
        step = batch or arr.chunks[0]
        starts = list(range(0, self.n, step))

        def read(start: int) -> np.ndarray:
            return self.read(layer, start, min(start + step, self.n))

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
    """Open a store and refuse it unless every ``expect`` attribute matches (its epoch, checkpoint
    hash, model, dataset, layer list, probe-set hash...); the error names the attribute and both values."""
    store = ActivationStore(path)
    for key, want in (expect or {}).items():
        have = store.attrs.get(key)
        if isinstance(want, tuple):
            want = list(want)
        if have != want:
            raise FeatdynError(f"activation store {path}: attribute {key!r} is {have!r}, expected {want!r} "
                               f"(the store was made from another checkpoint, probe set or setting; "
                               f"{_RECOMPUTE.format(path=path)})")
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
              expect: Mapping | None = None, *, source: Mapping | None = None,
              target: Mapping | None = None) -> tuple[ActivationStore, ActivationStore]:
    """Open the source store (epoch 0) and a target store, both checked against ``expect`` (e.g.
    :func:`expected_attrs`) plus their own ``source`` / ``target`` attributes (each one's epoch and
    checkpoint hash), and refuse the pair unless they are comparable (:func:`check_pair`)."""
    src = open_store(source_path, {**(expect or {}), "epoch": 0, **(source or {})})
    tgt = open_store(target_path, {**(expect or {}), **(target or {})})
    check_pair(src, tgt)
    return src, tgt


def expected_attrs(dataset_summary: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None,
                   **attrs) -> dict:
    """Attributes a store must have to belong to this run: the probe-set hash and image size of a
    prepared dataset (its ``dataset.json``), the sha256 of a checkpoint file, and any ``attrs``
    given as is (``model``, ``dataset``, ``epoch``, ``layers``)."""
    out = dict(attrs)
    if dataset_summary is not None:
        try:
            summary = json.loads(Path(dataset_summary).read_text())
            out |= {"probe_sha256": summary["probe_sha256"], "image_size": int(summary["image_size"])}
        except (OSError, ValueError, KeyError) as exc:
            raise FeatdynError(f"cannot read the probe hash from {dataset_summary}: {exc}") from exc
    if checkpoint is not None:
        from featdyn.data.download import file_sha256

        try:
            out["checkpoint_sha256"] = file_sha256(checkpoint)
        except OSError as exc:
            raise FeatdynError(f"cannot read checkpoint {checkpoint} to check the stores made from it: {exc}") from exc
    if "layers" in out:
        out["layers"] = list(out["layers"])
    return out
