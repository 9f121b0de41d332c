"""Zarr v3 activation stores: layout, attributes, atomicity, float16 range, plain-zarr readability."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import google_crc32c
import numcodecs
import numpy as np
import pytest
import zarr

from featdyn import FeatdynError
from featdyn.data.stores import (
    ActivationStore,
    StoreWriter,
    array_name,
    chunk_shape,
    expected_attrs,
    open_pair,
    open_store,
)

LAYERS = ["features.1", "layer1.2.relu@3"]
SHAPES = {"features.1": (3, 4, 5), "layer1.2.relu@3": (6, 2, 2)}
ATTRS = {"checkpoint_sha256": "c" * 64, "probe_sha256": "p" * 64, "image_size": 32, "epoch": 0,
         "model": "m", "dataset": "d", "arch": "resnet50"}


def activations(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # ReLU-like maps: about half zeros, the rest positive.
    return {k: np.maximum(rng.normal(size=(n, *s)), 0).astype(np.float32) for k, s in SHAPES.items()}


def write_store(path: Path, n: int = 10, chunk: int = 4, seed: int = 0, attrs: dict | None = None,
                **kw) -> dict[str, np.ndarray]:
    data = activations(n, seed)
    labels = np.arange(n) % 3
    with StoreWriter(path, n, LAYERS, {**ATTRS, **(attrs or {})}, chunk=chunk, **kw) as w:
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            w.write(start, {k: v[start:stop] for k, v in data.items()}, labels[start:stop], np.arange(start, stop) + 100)
    return data


@pytest.mark.parametrize("codec", ["zstd", "none"])
def test_round_trip_chunks_and_attributes(tmp_path, codec):
    path = tmp_path / "epoch_0.zarr"
    data = write_store(path, codec=codec)
    store = open_store(path, {"probe_sha256": "p" * 64, "checkpoint_sha256": "c" * 64})
    assert store.layers == LAYERS and store.n == 10
    assert store.attrs["dtype"] == "float32" and store.attrs["image_size"] == 32 and store.attrs["codec"] == codec
    np.testing.assert_array_equal(store.labels, np.arange(10) % 3)
    np.testing.assert_array_equal(store.index, np.arange(10) + 100)
    for layer in LAYERS:
        arr = store.array(layer)
        assert arr.shape == (10, *SHAPES[layer]) and arr.dtype == np.float32
        assert arr.chunks == (4, *SHAPES[layer]), "one chunk per extraction batch along the image axis"
        assert arr.attrs["layer"] == layer
        blocks = list(store.batches(layer))
        assert [s for s, _ in blocks] == [0, 4, 8] and [len(b) for _, b in blocks] == [4, 4, 2]
        np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), data[layer])
        unprefetched = np.concatenate([b for _, b in store.batches(layer, batch=3, prefetch=False)])
        np.testing.assert_array_equal(unprefetched, data[layer])
    assert not list(tmp_path.glob(".*tmp*")), "no temporary left behind"


def test_readable_by_plain_zarr_and_by_hand(tmp_path):
    """Any Zarr v3 reader sees the arrays; the chunk files are plain zstd-compressed C-order floats
    followed by the crc32c of those bytes (little-endian uint32, the Zarr v3 crc32c codec)."""
    path = tmp_path / "s.zarr"
    data = write_store(path, codec="zstd", level=1)
    root = json.loads((path / "zarr.json").read_text())
    assert root["zarr_format"] == 3 and root["node_type"] == "group"
    assert set(root["consolidated_metadata"]["metadata"]) >= {array_name(k) for k in LAYERS} | {"labels", "index"}
    assert root["attributes"]["layers"] == LAYERS
    group = zarr.open_group(str(path), mode="r")
    arr = group[array_name("layer1.2.relu@3")]
    np.testing.assert_array_equal(arr[:], data["layer1.2.relu@3"])
    meta = json.loads((path / array_name("features.1") / "zarr.json").read_text())
    assert meta["dimension_names"] == ["image", "channel", "y", "x"]
    assert meta["codecs"][1:] == [{"name": "zstd", "configuration": {"level": 1, "checksum": False}},
                                  {"name": "crc32c"}]
    raw = (path / array_name("features.1") / "c" / "1" / "0" / "0" / "0").read_bytes()
    assert raw[-4:] == np.uint32(google_crc32c.value(raw[:-4])).tobytes()
    block = np.frombuffer(numcodecs.Zstd().decode(raw[:-4]), dtype="<f4").reshape(4, *SHAPES["features.1"])
    np.testing.assert_array_equal(block, data["features.1"][4:8])


def test_large_layers_are_split_along_channels(tmp_path):
    shape = (10, 64, 16, 16)
    chunks = chunk_shape(shape, 4, 4, max_bytes=64 << 10)
    assert chunks == (4, 16, 16, 16), "the most channels that fit in 64 KiB (4 images x 16 x 16 x 4 bytes each)"
    chunks = chunk_shape((10, 96, 16, 16), 4, 4, max_bytes=80 << 10)
    assert chunks[1] == 16 and 96 % chunks[1] == 0, "20 channels would fit; 16 divides 96 (no padded edge chunk)"
    assert chunk_shape((10, 3, 512, 512), 4, 4, max_bytes=1 << 20)[1] == 1, "at least one channel"
    assert math.prod(chunk_shape((10, 8, 2, 2), 4, 4)) == 4 * 8 * 2 * 2, "small layers: one chunk per batch"
    # A real store with a small limit: several channel chunks per batch, same values back.
    path = tmp_path / "split.zarr"
    data = write_store(path, max_chunk_bytes=4 * 2 * 4 * 5 * 4)
    arr = ActivationStore(path).array("features.1")
    assert arr.chunks == (4, 1, 4, 5), "2 channels would fit, but 2 does not divide 3"
    np.testing.assert_array_equal(arr[:], data["features.1"])


def test_float16_stores_and_refuses_out_of_range(tmp_path):
    path = tmp_path / "f16.zarr"
    data = write_store(path, dtype="float16")
    store = ActivationStore(path)
    assert store.array("features.1").dtype == np.float16 and store.attrs["dtype"] == "float16"
    np.testing.assert_allclose(store.array("features.1")[:], data["features.1"], rtol=1e-3)
    for bad in (7e4, -7e4, np.inf, np.nan):
        batch = activations(2)
        batch["features.1"][1, 0, 0, 0] = bad
        out = tmp_path / f"bad_{bad}.zarr"
        with pytest.raises(FeatdynError, match="outside float16's range|non-finite activations"):
            with StoreWriter(out, 2, LAYERS, ATTRS, chunk=2, dtype="float16") as w:
                w.write(0, batch, np.zeros(2), np.arange(2))
        assert not out.exists() and not list(tmp_path.glob(f".{out.name}.tmp*"))
    with pytest.raises(FeatdynError, match="extraction.dtype"):
        StoreWriter(tmp_path / "x.zarr", 2, LAYERS, ATTRS, chunk=2, dtype="bfloat16")


def test_interrupted_write_leaves_no_store_and_keeps_the_old_one(tmp_path):
    path = tmp_path / "s.zarr"
    old = write_store(path, seed=1)
    data = activations(10, seed=2)
    with pytest.raises(KeyboardInterrupt):
        with StoreWriter(path, 10, LAYERS, ATTRS, chunk=4) as w:
            w.write(0, {k: v[:4] for k, v in data.items()}, np.zeros(4), np.arange(4))
            raise KeyboardInterrupt  # killed after the first batch
    np.testing.assert_array_equal(ActivationStore(path).array("features.1")[:], old["features.1"])
    assert not list(tmp_path.glob(".*tmp*"))
    # Leaving rows unwritten is refused at the end, not stored as zeros.
    with pytest.raises(FeatdynError, match="never written"):
        with StoreWriter(tmp_path / "partial.zarr", 10, LAYERS, ATTRS, chunk=4) as w:
            w.write(0, {k: v[:4] for k, v in data.items()}, np.zeros(4), np.arange(4))
    assert not (tmp_path / "partial.zarr").exists()


def test_a_killed_writers_temporary_is_not_a_store_and_is_cleaned_on_rerun(tmp_path):
    path = tmp_path / "s.zarr"
    stale = tmp_path / ".s.zarr.tmp-4242-deadbeef"
    write_store(stale)  # a complete-looking group, but under the temporary name
    with pytest.raises(FeatdynError, match="interrupted write"):
        open_store(path)
    write_store(path)
    assert not stale.exists() and open_store(path).n == 10


def test_reader_refuses_mismatched_or_foreign_stores(tmp_path):
    src, tgt = tmp_path / "epoch_0.zarr", tmp_path / "epoch_1.zarr"
    write_store(src)
    write_store(tgt, seed=3, attrs={"epoch": 1, "checkpoint_sha256": "e" * 64})
    s, t = open_pair(src, tgt, {"probe_sha256": "p" * 64, "model": "m"})
    assert (s.attrs["epoch"], t.attrs["epoch"]) == (0, 1)
    with pytest.raises(FeatdynError, match="checkpoint_sha256"):
        open_store(tgt, {"checkpoint_sha256": "c" * 64})
    with pytest.raises(FeatdynError, match="'epoch' is 1, expected 0"):
        open_pair(tgt, src)
    other = tmp_path / "other_probe.zarr"
    write_store(other, attrs={"epoch": 1, "probe_sha256": "q" * 64})
    with pytest.raises(FeatdynError, match="probe_sha256"):
        open_pair(src, other)
    with pytest.raises(FeatdynError, match="probe_sha256"):
        open_pair(src, tgt, {"probe_sha256": "q" * 64})
    shuffled = tmp_path / "shuffled.zarr"
    data = activations(10)
    with StoreWriter(shuffled, 10, LAYERS, {**ATTRS, "epoch": 1}, chunk=10) as w:
        w.write(0, data, np.arange(10)[::-1] % 3, np.arange(10))
    with pytest.raises(FeatdynError, match="different probe images"):
        open_pair(src, shuffled)
    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w", zarr_format=3).create_array("x", shape=(2,), dtype="f4")
    with pytest.raises(FeatdynError, match="not a featdyn store"):
        open_store(plain)


def test_expected_attrs_from_the_dataset_summary_and_checkpoint(tmp_path):
    summary = tmp_path / "dataset.json"
    summary.write_text(json.dumps({"probe_sha256": "p" * 64, "image_size": 32}))
    ckpt = tmp_path / "epoch_0.pt"
    ckpt.write_bytes(b"weights")
    want = expected_attrs(summary, ckpt, model="m")
    assert want == {"probe_sha256": "p" * 64, "image_size": 32, "model": "m",
                    "checkpoint_sha256": hashlib.sha256(b"weights").hexdigest()}
    with pytest.raises(FeatdynError, match="dataset.json"):
        expected_attrs(tmp_path / "missing" / "dataset.json")
