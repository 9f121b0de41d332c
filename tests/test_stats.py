"""Streaming float64 sufficient statistics equal the one-shot ones, and give the same metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from featdyn import FeatdynError
from featdyn.engine.metrics import METRICS, from_stats
from featdyn.engine.stats import (
    Accumulator,
    load_pairs,
    load_sides,
    pair_stats,
    rows_of,
    save_pairs,
    save_sides,
    stream_pair,
)

from metric_reference import REFERENCES, centred, make_pair, single_thread  # noqa: F401

NAMES = list(METRICS)


def split_points(n: int, cuts: list[int]) -> list[tuple[int, int]]:
    edges = sorted({0, n, *(c % n for c in cuts)})
    return list(zip(edges[:-1], edges[1:]))


@settings(max_examples=20, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), cuts=st.lists(st.integers(1, 10**6), max_size=6))
def test_streaming_equals_one_shot(seed, cuts):
    x, y = make_pair("random", 97, 6, 0.6, np.random.default_rng(seed))
    whole = pair_stats(x, y)
    acc = Accumulator("cpu")
    for a, b in split_points(len(x), cuts):
        acc.update(x[a:b], y[a:b])
    streamed = acc.pair()
    for got, want in zip(streamed.centered(), whole.centered()):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-10)
    cxx, cyy, cxy = whole.centered()
    xc, yc = centred(x), centred(y)
    np.testing.assert_allclose(cxy.numpy(), xc.T @ yc, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(cxx.numpy(), xc.T @ xc, rtol=1e-10, atol=1e-10)
    for name in NAMES:
        assert from_stats(name, streamed) == pytest.approx(from_stats(name, whole), abs=1e-12)


def test_small_blocks_are_used_and_give_the_same_result(monkeypatch):
    """The row blocks that bound the working memory do not change the statistics."""
    x, y = make_pair("dead_units", 300, 8, 0.5, np.random.default_rng(1))
    whole = pair_stats(x, y)
    monkeypatch.setitem(__import__("featdyn.engine.stats").engine.stats.BLOCK_ELEMENTS, "cpu", 8 * 7)  # 7 rows a block
    blocked = pair_stats(x, y)
    for got, want in zip(blocked.centered(), whole.centered()):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-11)


@pytest.mark.parametrize("syrk", [True, False])
@pytest.mark.parametrize("c", [300, 13])
def test_block_products_give_the_full_statistics(monkeypatch, c, syrk):
    """The CPU's syrk of [X | Y] in parts of rows on two threads (and the torch matmuls of GPUs and
    of CPUs without threadpoolctl): the full, symmetric statistics, equal to the direct products,
    streamed or in one shot, for both sides and for a side alone. Parts of 64 rows: several per
    block, the last one short."""
    st = __import__("featdyn.engine.stats").engine.stats
    monkeypatch.setattr(st, "TASK_ROWS", 64)
    monkeypatch.setattr(st, "cpu_workers", lambda: 2)  # two threads, whatever the machine
    if not syrk:
        monkeypatch.setattr(st, "threadpool_limits", None)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((500, c)).astype(np.float32) + 3.0
    y = (x @ rng.standard_normal((c, c)).astype(np.float32) / np.sqrt(c)).astype(np.float32)
    whole = pair_stats(x, y)
    acc = Accumulator("cpu")
    for a, b in split_points(500, [123, 377]):
        acc.update(x[a:b], y[a:b])
    side = Accumulator("cpu")
    side.update(x)
    xc, yc = centred(x.astype(np.float64)), centred(y.astype(np.float64))
    for stats in (whole, acc.pair()):
        for got, want in zip(stats.centered(), (xc.T @ xc, yc.T @ yc, xc.T @ yc)):
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(side.side().centered().numpy(), xc.T @ xc, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(side.side().gram, whole.x.gram, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("c", [2, 17, 64, 300])
def test_a_representation_against_itself_gives_identical_bits(monkeypatch, c):
    """X against itself: X^T Y equals X^T X and Y^T Y bit for bit, in one pass and against a source
    side accumulated alone from the same batches (the workflow's epoch 0 against the source),
    whatever the thread count;
    so every metric is 0 up to its last rounding (separate gemm and syrk calls differ in the last
    bits for some widths, e.g. 17, and full whitening makes that 1e-6 rad)."""
    st = __import__("featdyn.engine.stats").engine.stats
    rng = np.random.default_rng(c)
    x = np.maximum(rng.standard_normal((3000, c)), 0).astype(np.float32)
    one = pair_stats(x, x)
    assert torch.equal(one.xy, one.x.gram) and torch.equal(one.y.gram, one.x.gram)
    monkeypatch.setattr(st, "cpu_workers", lambda: 1)
    source = Accumulator("cpu")
    for i in range(0, 3000, 700):  # the store's batches, as the epoch's pass reads them
        source.update(x[i:i + 700])
    monkeypatch.setattr(st, "cpu_workers", lambda: 3)
    epoch = stream_pair([(x[i:i + 700], x[i:i + 700]) for i in range(0, 3000, 700)], source=source.side())
    assert torch.equal(epoch.xy, source.side().gram)
    for name in NAMES:
        assert from_stats(name, epoch) == pytest.approx(0.0, abs=1e-7 if name in ("pwsm", "cca") else 1e-12)


def test_inputs_are_not_modified_in_place():
    x, y = make_pair("random", 50, 4, 0.5, np.random.default_rng(2))
    x0, y0 = x.copy(), y.copy()
    pair_stats(torch.from_numpy(x), torch.from_numpy(y))
    pair_stats(x, y)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)


def test_large_offsets_lose_no_digits():
    """Activations far from 0 (float32, mean 1e4, spread 1): the shift by the first block's means
    keeps the centred statistics exact where sum(x^2) - n mean^2 would lose 8 digits."""
    rng = np.random.default_rng(3)
    x, y = make_pair("random", 400, 5, 0.5, rng)
    xs, ys = (x + 1e4).astype(np.float32), (y - 3e4).astype(np.float32)
    for name in NAMES:
        want = REFERENCES[name](xs.astype(np.float64), ys.astype(np.float64))
        assert from_stats(name, pair_stats(xs, ys)) == pytest.approx(want, abs=1e-9)


def test_source_side_is_shared_across_epochs(tmp_path):
    """The source statistics are computed once, saved, and joined with each epoch's cross terms."""
    rng = np.random.default_rng(4)
    maps = rng.standard_normal((12, 5, 3, 4)).astype(np.float32)  # (N, C, H, W): source model
    acc = Accumulator("cpu")
    for i in range(0, 12, 5):
        acc.update(maps[i:i + 5])
    save_sides(tmp_path / "source.npz", {"layer": acc.side()})
    source = load_sides(tmp_path / "source.npz")
    for epoch in (1, 2):
        target = maps + epoch * rng.standard_normal(maps.shape).astype(np.float32)
        blocks = [(maps[i:i + 4], target[i:i + 4]) for i in range(0, 12, 4)]
        pairs = {"layer": stream_pair(blocks, source=source["layer"])}
        save_pairs(tmp_path / f"epoch_{epoch}.npz", pairs)
        loaded = load_pairs(tmp_path / f"epoch_{epoch}.npz", source)["layer"]
        whole = pair_stats(rows_of(maps), rows_of(target))
        for name in NAMES:
            assert from_stats(name, loaded) == pytest.approx(from_stats(name, whole), abs=1e-12)
        # rows are (image, y, x) positions: the same as flattening the maps by hand
        flat = maps.transpose(0, 2, 3, 1).reshape(-1, 5)
        assert from_stats("procrustes", loaded) == pytest.approx(
            REFERENCES["procrustes"](flat.astype(np.float64), rows_of(target).numpy().astype(np.float64)), abs=1e-9)


def test_mismatched_rows_are_refused(tmp_path):
    with pytest.raises(FeatdynError, match="rows"):
        pair_stats(np.zeros((5, 2)), np.zeros((4, 2)))
    source = Accumulator("cpu")
    source.update(np.random.default_rng(5).standard_normal((10, 3)))
    with pytest.raises(FeatdynError, match="n=10"):
        stream_pair([(np.ones((8, 3)), np.ones((8, 3)))], source=source.side())
    with pytest.raises(FeatdynError, match="cannot read"):
        load_sides(tmp_path / "missing.npz")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu():
    x, y = make_pair("ill_conditioned", 500, 16, 0.5, np.random.default_rng(6))
    for name in NAMES:
        assert from_stats(name, pair_stats(x, y, "cuda")) == pytest.approx(from_stats(name, pair_stats(x, y)), abs=1e-8)
