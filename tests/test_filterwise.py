"""Filter granularity against a numpy reference of the authors' per-map computation, dead maps,
class averaging, the fast polar path, chunking, and the store-to-table path."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from featdyn import FeatdynError
from featdyn.engine import filterwise as fw
from featdyn.engine.filterwise import FilterAccumulator, filter_scores, map_distances
from featdyn.engine.linalg import polar_nuclear_norm, polar_schedule, torch_threads

from metric_reference import single_thread  # noqa: F401

# -- reference: the authors' code path, in numpy (compute_similarities.py + CKA class) -----------

def authors_normalise(a: np.ndarray) -> np.ndarray:
    """normalize_matrix_for_similarity(X, dim=1): X minus the mean of each row, over ||.||_F."""
    ac = a - a.mean(axis=1, keepdims=True)
    return ac / np.linalg.norm(ac)


def ref_map_procrustes(a: np.ndarray, b: np.ndarray) -> float:
    """1 - (Procrustes similarity ||A*^T B*||_*) of one pair of maps."""
    return 1.0 - np.linalg.svd(authors_normalise(a).T @ authors_normalise(b), compute_uv=False).sum()


def ref_map_cka(a: np.ndarray, b: np.ndarray) -> float:
    """1 - linear_CKA(A*, B*) with the centring matrix H = I - 11^T/n on the kernels X X^T."""
    x, y = authors_normalise(a), authors_normalise(b)
    h = np.eye(x.shape[0]) - np.ones((x.shape[0],) * 2) / x.shape[0]

    def hsic(p, q):
        return np.sum((h @ (p @ p.T) @ h) * (h @ (q @ q.T) @ h))

    return 1.0 - hsic(x, y) / math.sqrt(hsic(x, x) * hsic(y, y))


REF = {"procrustes": ref_map_procrustes, "cka": ref_map_cka}


def is_dead(a: np.ndarray, kind: str) -> bool:
    ac = a - a.mean(axis=1, keepdims=True)
    if kind == "cka":
        ac = ac - ac.mean(axis=0, keepdims=True)
    return np.linalg.norm(ac) <= 1e-10 * np.linalg.norm(a)


def ref_filter_vector(kind: str, x: np.ndarray, y: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Per filter: mean over images of each class (dead pairs skipped), then mean over classes."""
    n, c = x.shape[:2]
    out, skipped = np.full(c, np.nan), 0
    for f in range(c):
        class_means = []
        for k in np.unique(labels):
            vals = []
            for i in np.flatnonzero(labels == k):
                if is_dead(x[i, f], kind) or is_dead(y[i, f], kind):
                    skipped += 1
                    continue
                vals.append(REF[kind](x[i, f], y[i, f]))
            if vals:
                class_means.append(np.mean(vals))
        if class_means:
            out[f] = np.mean(class_means)
    return out, skipped


def maps_with_dead(rng: np.random.Generator, n=7, c=5, h=6, w=9) -> tuple[np.ndarray, np.ndarray]:
    """ReLU maps of a source and a perturbed model, with the cases the authors' code met as NaN:
    an all-zero map, a map constant along its rows (zero after row centring), a dead filter."""
    x = np.maximum(rng.standard_normal((n, c, h, w)), 0).astype(np.float32)
    y = np.maximum(x + 0.5 * rng.standard_normal(x.shape), 0).astype(np.float32)
    x[0, 1] = 0.0                                      # all-zero map
    y[2, 3] = np.linspace(1, 2, h)[:, None]            # constant along each row
    x[:, 4] = 0.0                                      # a filter dead in every image
    x[3, 0, :, :] = np.outer(rng.random(h), np.ones(w))  # rank one, also constant along rows
    return x, y


@pytest.mark.parametrize("kind", fw.FILTER_KINDS)
@pytest.mark.parametrize("method", ["eig", "svd", "polar"])
def test_pairs_agree_with_the_authors_computation(kind, method):
    rng = np.random.default_rng(0)
    x, y = maps_with_dead(rng)
    values, valid = map_distances(kind, x, y, method=method, device="cpu")
    assert values.dtype == torch.float64 and not torch.isnan(values).any()
    for i, f in np.ndindex(*x.shape[:2]):
        dead = is_dead(x[i, f].astype(np.float64), kind) or is_dead(y[i, f].astype(np.float64), kind)
        assert bool(valid[i, f]) == (not dead)
        if not dead:
            want = REF[kind](x[i, f].astype(np.float64), y[i, f].astype(np.float64))
            assert float(values[i, f]) == pytest.approx(want, abs=1e-10)


@pytest.mark.parametrize("kind", fw.FILTER_KINDS)
def test_per_filter_vector_averages_images_within_classes_then_classes(kind):
    rng = np.random.default_rng(1)
    x, y = maps_with_dead(rng, n=11)
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2])  # unequal classes: the order of means matters
    scores = filter_scores(kind, x, y, labels, method="eig", device="cpu")
    want, skipped = ref_filter_vector(kind, x.astype(np.float64), y.astype(np.float64), labels)
    got = scores.per_filter()
    np.testing.assert_allclose(got[:4], want[:4], atol=1e-10)
    assert np.isnan(got[4]) and np.isnan(want[4]), "a filter dead in every image is undefined"
    assert scores.undefined_filters() == 1
    assert int(scores.skipped.sum()) == skipped >= 11 + 2
    assert scores.layer_value() == pytest.approx(np.nanmean(want), abs=1e-10)
    assert list(scores.classes) == [0, 1, 2]
    assert scores.counts.sum() + scores.skipped.sum() == x.shape[0] * x.shape[1]


def test_streaming_batches_and_chunks_change_nothing(monkeypatch):
    rng = np.random.default_rng(2)
    x, y = maps_with_dead(rng, n=9)
    labels = rng.integers(0, 3, size=9)
    whole = filter_scores("procrustes", x, y, labels, method="eig", device="cpu")
    monkeypatch.setitem(fw.CHUNK_ELEMENTS, "cpu", 3 * 6 * 9)  # 3 map pairs per chunk
    acc = FilterAccumulator("procrustes", method="eig", device="cpu")
    for i in range(0, 9, 4):
        acc.update(x[i:i + 4], y[i:i + 4], labels[i:i + 4])
    streamed = acc.result()
    np.testing.assert_allclose(streamed.sums, whole.sums, atol=1e-12)
    np.testing.assert_array_equal(streamed.counts, whole.counts)
    np.testing.assert_array_equal(streamed.skipped, whole.skipped)


def test_invariances_of_the_authors_normalisation_both_ways():
    """Row centring and Frobenius scaling make both values blind to a positive scale and to a
    constant added to each row; a constant added to each column is removed by CKA's own centring
    but not by Procrustes (its maps are not column-centred)."""
    rng = np.random.default_rng(3)
    a, b = rng.random((1, 1, 8, 8)) + 0.1, rng.random((1, 1, 8, 8))
    base = {k: float(map_distances(k, a, b, "eig", "cpu")[0]) for k in fw.FILTER_KINDS}
    rows = a * 3.7 + rng.random((8, 1))
    cols = a + 5 * rng.random((1, 8))
    for k in fw.FILTER_KINDS:
        assert float(map_distances(k, rows, b, "eig", "cpu")[0]) == pytest.approx(base[k], abs=1e-12)
        assert float(map_distances(k, b, a, "eig", "cpu")[0]) == pytest.approx(base[k], abs=1e-12)  # symmetric
    assert float(map_distances("cka", cols, b, "eig", "cpu")[0]) == pytest.approx(base["cka"], abs=1e-12)
    assert abs(float(map_distances("procrustes", cols, b, "eig", "cpu")[0]) - base["procrustes"]) > 1e-3
    assert float(map_distances("procrustes", a, a, "eig", "cpu")[0]) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("size", [14, 56, 224])
def test_polar_fast_path_matches_exact_nuclear_norm(size):
    """The GPU fast path on CPU: scaled Newton-Schulz against LAPACK's SVD, on correlated ReLU
    maps (low rank and rank-deficient included), far inside the 1e-6 target and within 1e-8 of
    the exact path, and never above the exact value (it converges from below)."""
    rng = np.random.default_rng(4)
    pairs = 6 if size == 224 else 24
    a = np.maximum(rng.standard_normal((pairs, size, size)), 0)
    b = np.maximum(a + 0.6 * rng.standard_normal(a.shape), 0)
    a[: pairs // 3, :, size // 4:] = 0  # low rank
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    a /= np.linalg.norm(a, axis=(1, 2), keepdims=True)
    b /= np.linalg.norm(b, axis=(1, 2), keepdims=True)
    m = np.swapaxes(a, 1, 2) @ b
    exact = np.linalg.svd(m, compute_uv=False).sum(-1)
    fast = polar_nuclear_norm(torch.from_numpy(m), tol=fw.POLAR_TOL).numpy()
    assert np.abs(fast - exact).max() < 1e-8
    assert (fast <= exact + 1e-12).all()
    assert len(polar_schedule(size, fw.POLAR_TOL)) <= 40


def map_families(rng: np.random.Generator, pairs: int, size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """float32 map pairs (pairs, size, size) of the kinds real layers produce: generic ReLU maps,
    low rank, zero rows / columns (rows constant after ReLU), rows constant before centring,
    smooth maps with fast-decaying spectra, dead maps, and a map against itself."""
    def relu(t):
        return np.maximum(t, 0).astype(np.float32)

    def noisy(t, s=0.6):
        return relu(t + s * rng.standard_normal(t.shape))

    def blur(t, k):
        out = t.copy()
        for axis in (-1, -2):
            out = sum(np.roll(out, i, axis) for i in range(-(k // 2), k // 2 + 1)) / k
        return out

    shape = (pairs, size, size)
    base = relu(rng.standard_normal(shape))
    low = relu(rng.standard_normal((pairs, size, 3)) @ rng.standard_normal((pairs, 3, size)))
    rows, cols, const = base.copy(), base.copy(), base.copy()
    rows[:, : size // 2] = 0
    cols[:, :, size // 4:] = 0
    const[:, ::2] = const[:, ::2, :1]
    smooth = relu(blur(rng.standard_normal(shape), 5) - 0.05)
    dead = base.copy()
    dead[::2] = 0
    return {"random": (base, noisy(base)), "low_rank": (low, noisy(low, 0.3)), "zero_rows": (rows, noisy(base)),
            "zero_cols": (cols, noisy(cols)), "constant_rows": (const, noisy(const)),
            "smooth": (smooth, relu(smooth + 0.3 * blur(rng.standard_normal(shape), 5))),
            "dead": (dead, noisy(base)), "identical": (base, base.copy())}


def lapack_procrustes(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1 - sum of LAPACK's singular values of A*^T B* (W x W, no deflation), and liveness."""
    ta, tb = torch.from_numpy(a).double(), torch.from_numpy(b).double()
    ac, bc = ta - ta.mean(-1, keepdim=True), tb - tb.mean(-1, keepdim=True)
    na, nb = torch.linalg.matrix_norm(ac), torch.linalg.matrix_norm(bc)
    live = (na > 1e-10 * torch.linalg.matrix_norm(ta)) & (nb > 1e-10 * torch.linalg.matrix_norm(tb))
    m = (ac / na.clamp_min(1e-300)[:, None, None]).mT @ (bc / nb.clamp_min(1e-300)[:, None, None])
    return (1.0 - torch.linalg.svdvals(m).sum(-1)).numpy(), live.numpy()


@pytest.mark.parametrize("size", [14, 56, 224])
def test_every_path_agrees_with_lapack_on_realistic_maps(size):
    """Deflation, the rank bound, the eigen path's check and its svdvals fallback, the probe of
    'auto', and the polar iteration: within 1e-10 of LAPACK on the full W x W product (polar,
    the GPU path: 1e-8), on every kind of map; dead pairs flagged."""
    rng = np.random.default_rng(size)
    pairs = 2 if size == 224 else 12
    for name, (a, b) in map_families(rng, pairs, size).items():
        want, live = lapack_procrustes(a, b)
        for method, tol in [("auto", 1e-10), ("eig", 1e-10), ("svd", 1e-10), ("polar", 1e-8)]:
            got, valid = map_distances("procrustes", a, b, method=method, device="cpu")
            np.testing.assert_array_equal(valid.numpy(), live, err_msg=f"{name} {method}")
            err = np.abs(got.numpy() - np.clip(want, 0, 1))[live]
            assert err.max(initial=0) <= tol, (name, method, err.max())


def test_deflation_keeps_singular_values_and_the_rank_bound_holds():
    """The Householder deflation drops exactly the zero singular value of the ones vector, and
    the zero-pattern bound is never below the numerical rank of A*^T B*."""
    rng = np.random.default_rng(7)
    for name, (a, b) in map_families(rng, 6, 20).items():
        ta, tb = torch.from_numpy(a).double(), torch.from_numpy(b).double()
        ac, bc = fw._centre_rows(ta), fw._centre_rows(tb)
        full = torch.linalg.svdvals(ac.mT @ bc)
        deflated = torch.linalg.svdvals(fw._deflate_with_sums(ac)[0].mT @ fw._deflate_with_sums(bc)[0])
        assert deflated.shape[-1] == 19
        torch.testing.assert_close(deflated, full[:, :19], atol=1e-12, rtol=0)
        assert (full[:, 19] <= 1e-12 * full[:, 0].clamp_min(1e-300)).all(), name
        rank = torch.linalg.matrix_rank(ac.mT @ bc, rtol=1e-12)
        assert (fw._rank_bound(ta, tb) >= rank).all(), name
        if name in ("zero_rows", "zero_cols"):
            assert (fw._rank_bound(ta, tb) < 19).all(), f"{name}: the zero pattern should bound the rank"


def test_auto_probes_the_eigen_path_and_keeps_or_drops_it(monkeypatch):
    """'auto' on the CPU: generic maps stay on the eigen path (few svdvals); smooth maps, whose
    products have singular values far below sqrt(eps) sigma_max, switch to svdvals after the probe."""
    calls = {"eig": 0, "svd": 0}
    eig, svd = fw.eig_nuclear_norms, fw.svd_nuclear_norms

    def count_eig(m, rank=None):
        calls["eig"] += m.shape[0]
        return eig(m, rank)

    def count_svd(m):
        calls["svd"] += m.shape[0]
        return svd(m)

    monkeypatch.setattr(fw, "eig_nuclear_norms", count_eig)
    monkeypatch.setattr(fw, "svd_nuclear_norms", count_svd)
    monkeypatch.setitem(fw.CHUNK_ELEMENTS, "cpu", 4 * 28 * 28)
    rng = np.random.default_rng(8)
    fam = map_families(rng, 96, 28)
    map_distances("procrustes", *fam["random"], method="auto", device="cpu")
    assert calls["eig"] == 96 and calls["svd"] <= 96 * (1 - fw.EIG_PASS_RATE)
    calls.update(eig=0, svd=0)
    map_distances("procrustes", *fam["smooth"], method="auto", device="cpu")
    assert fw.PROBE_PAIRS <= calls["eig"] < 96 and calls["svd"] > 96 - calls["eig"]


def test_threads_and_groups_change_nothing(monkeypatch):
    """One thread and one group against two threads and groups of three pairs: the same values
    up to rounding (the batched matmuls' kernels depend on the batch size) and the same masks."""
    rng = np.random.default_rng(9)
    a, b = map_families(rng, 40, 16)["random"]
    with torch_threads(1):
        one, ok1 = map_distances("procrustes", a, b, method="eig", device="cpu")
    with torch_threads(2):
        monkeypatch.setitem(fw.CHUNK_ELEMENTS, "cpu", 3 * 16 * 16)
        two, ok2 = map_distances("procrustes", a, b, method="eig", device="cpu")
    assert torch.equal(ok1, ok2)
    torch.testing.assert_close(one, two, atol=1e-12, rtol=0)


def test_bad_inputs_are_named():
    with pytest.raises(FeatdynError, match="filter granularity"):
        map_distances("pwsm", np.ones((2, 3, 3)), np.ones((2, 3, 3)))
    with pytest.raises(FeatdynError, match="same shape"):
        map_distances("cka", np.ones((2, 3, 3)), np.ones((2, 3, 4)))
    with pytest.raises(FeatdynError, match="labels"):
        FilterAccumulator("cka").update(np.ones((2, 1, 3, 3)), np.ones((2, 1, 3, 3)), [0, 1, 2])


def test_store_tables_and_tidy_scores(tmp_path):
    """Real Zarr stores in, the per-(layer, class, filter) table and the tidy layer means out."""
    from featdyn.data.stores import StoreWriter
    from featdyn.engine.similarity import filter_scores_from_stores, score_filters
    from featdyn.spec.columns import FILTER_COLUMNS

    rng = np.random.default_rng(5)
    n = 10
    labels = np.repeat([0, 1, 2], [4, 4, 2])
    layers = {"conv1": maps_with_dead(rng, n=n, c=5, h=6, w=6), "conv2": maps_with_dead(rng, n=n, c=5, h=3, w=4)}
    for epoch in (0, 1):
        attrs = {"epoch": epoch, "probe_sha256": "p", "image_size": 32, "model": "m", "dataset": "d"}
        with StoreWriter(tmp_path / f"e{epoch}.zarr", n, list(layers), attrs, chunk=4) as w:
            for i in range(0, n, 4):
                w.write(i, {k: v[epoch][i:i + 4] for k, v in layers.items()}, labels[i:i + 4], np.arange(i, min(i + 4, n)))
    block = {"kind": "cka", "granularity": "filter"}
    table, _ = filter_scores_from_stores(tmp_path / "e0.zarr", tmp_path / "e1.zarr", block, model="m", dataset="d",
                                         metric="cka_f", device="cpu")
    assert list(table.columns) == FILTER_COLUMNS
    assert len(table) == 2 * 3 * 5 and (table["epoch"] == 1).all()
    for li, (layer, (x, y)) in enumerate(layers.items()):
        sub = table[table["layer"] == layer]
        want = filter_scores("cka", x, y, labels, method="eig", device="cpu")
        np.testing.assert_allclose(sub["value"].to_numpy(), want.class_means().reshape(-1), atol=1e-12, equal_nan=True)
        assert sub["skipped"].sum() == want.skipped.sum() and (sub["layer_index"] == li).all()
    path = tmp_path / "epoch_1.csv"
    table.to_csv(path, index=False)
    tidy = score_filters([path], block, model="m", dataset="d", metric="cka_f")
    assert list(tidy["layer"]) == ["conv1", "conv2"] and (tidy["granularity"] == "filter").all()
    for layer, (x, y) in layers.items():
        want = filter_scores("cka", x, y, labels, method="eig", device="cpu").layer_value()
        assert float(tidy.loc[tidy["layer"] == layer, "value"].iloc[0]) == pytest.approx(want, abs=1e-12)
    # the source against itself: every defined value is 0
    self_table, _ = filter_scores_from_stores(tmp_path / "e0.zarr", tmp_path / "e0.zarr", block, model="m",
                                              dataset="d", metric="cka_f", device="cpu")
    assert pd.Series(self_table["value"]).dropna().abs().max() < 1e-12


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", fw.FILTER_KINDS)
def test_cuda_equals_cpu(kind):
    x, y = maps_with_dead(np.random.default_rng(6), n=16, c=8, h=28, w=28)
    cpu, ok_cpu = map_distances(kind, x, y, method="eig", device="cpu")
    gpu, ok_gpu = map_distances(kind, x, y, method="auto", device="cuda")
    assert torch.equal(ok_cpu, ok_gpu)
    assert (cpu - gpu).abs().max() < 1e-8
