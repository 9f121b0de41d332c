"""What the integrity checks of activation stores cost: crc32c per chunk, finite checks, chunk listing.

One command (CPU):
    tools/with_tcmalloc.sh .venv/bin/python benchmarks/bench_integrity.py

Write: ``StoreWriter`` (zstd or none, then crc32c; every batch checked finite) against the same
``StoreWriter`` with the checks switched off (the codec alone, no finite check). Read: an
``ActivationStore`` (every chunk file listed at open, every block's checksum verified) against
the same reader, checks off, on a store without checksums. Both
sides write and read the same ReLU-like float32 activations (about half zeros), alternately,
``--repeats`` times; the figure of merit is the median ratio checked / unchecked (1.0 = free).
Also: sha256 of a file (the similarity jobs hash the checkpoints their stores claim), in GB/s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
import zarr.codecs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from featdyn.data import stores  # noqa: E402
from featdyn.data.download import file_sha256  # noqa: E402


def activations(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal((n, *shape), dtype=np.float32), 0)


@contextlib.contextmanager
def checks_off():
    """The featdyn reader and writer as they were before the integrity checks."""
    saved = (stores._compressors, stores.check_activations, stores.ActivationStore.check_chunks)
    stores._compressors = lambda codec, level: [zarr.codecs.ZstdCodec(level=level)] if codec == "zstd" else None
    stores.check_activations = lambda *a, **k: None
    stores.ActivationStore.check_chunks = lambda self: None
    try:
        yield
    finally:
        stores._compressors, stores.check_activations, stores.ActivationStore.check_chunks = saved


def write(path: Path, data: np.ndarray, chunk: int, codec: str) -> None:
    n = len(data)
    with stores.StoreWriter(path, n, ["layer"], {"epoch": 0}, chunk=chunk, codec=codec) as w:
        for s in range(0, n, chunk):
            w.write(s, {"layer": data[s:s + chunk]}, np.zeros(min(chunk, n - s)), np.arange(s, min(s + chunk, n)))


def read(path: Path) -> float:
    store = stores.ActivationStore(path)
    return sum(float(b[0, 0, 0, 0]) for _, b in store.batches("layer", prefetch=False))


def write_plain(*args) -> None:
    with checks_off():
        write(*args)


def read_plain(path: Path) -> float:
    with checks_off():
        return read(path)


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=96, help="probe images")
    ap.add_argument("--shape", type=int, nargs=3, default=[256, 28, 28], help="C H W of the layer")
    ap.add_argument("--chunk", type=int, default=32, help="images per chunk (extraction.batch_size)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    args = ap.parse_args()
    data = activations(args.n, tuple(args.shape))
    print(f"layer {tuple(args.shape)} x {args.n} images: {data.nbytes / 1e6:.0f} MB float32, chunks of {args.chunk}")
    work = Path(tempfile.mkdtemp(dir=args.dir, prefix="bench_integrity_"))
    try:
        for codec in ("zstd", "none"):
            w_ratio, r_ratio, w_abs, r_abs = [], [], [], []
            for i in range(args.repeats):
                checked, plain = work / f"checked_{codec}.zarr", work / f"plain_{codec}.zarr"
                for p in (checked, plain):
                    shutil.rmtree(p, ignore_errors=True)
                # alternate which side goes first (page cache, allocator warm-up)
                order = [("c", checked), ("p", plain)] if i % 2 == 0 else [("p", plain), ("c", checked)]
                tw = {k: timed(write if k == "c" else write_plain, p, data, args.chunk, codec) for k, p in order}
                tr = {k: timed(read if k == "c" else read_plain, p) for k, p in order}
                w_ratio.append(tw["c"] / tw["p"])
                r_ratio.append(tr["c"] / tr["p"])
                w_abs.append((tw["c"], tw["p"]))
                r_abs.append((tr["c"], tr["p"]))
            mb = data.nbytes / 1e6
            wc, wp = (statistics.median(x[j] for x in w_abs) for j in (0, 1))
            rc, rp = (statistics.median(x[j] for x in r_abs) for j in (0, 1))
            print(f"codec {codec:4s}  write: checked {mb / wc:6.0f} MB/s, unchecked {mb / wp:6.0f} MB/s, "
                  f"ratio checked/unchecked {statistics.median(w_ratio):.2f} (median of {args.repeats})")
            print(f"codec {codec:4s}  read : checked {mb / rc:6.0f} MB/s, unchecked {mb / rp:6.0f} MB/s, "
                  f"ratio checked/unchecked {statistics.median(r_ratio):.2f}")
        blob = work / "blob.bin"
        blob.write_bytes(os.urandom(256 << 20))
        file_sha256(blob)  # warm the page cache
        rate = blob.stat().st_size / 1e9 / min(timed(file_sha256, blob) for _ in range(3))
        print(f"sha256 of a file in the page cache: {rate:.2f} GB/s (a 1.7 GB VGG19 + Adam checkpoint: "
              f"{1.7 / rate:.1f} s per hash)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
