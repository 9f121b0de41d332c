"""The linear-algebra kernels: the eigen path's error check against LAPACK, threading helpers,
and the GPU benchmark code run on the CPU (--smoke)."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from featdyn.engine import linalg
from featdyn.engine.linalg import (
    eig_nuclear_norms,
    lapack_threads,
    nuclear_norm,
    parallel_map,
    svd_nuclear_norms,
    torch_threads,
)

from conftest import REPO
from metric_reference import single_thread  # noqa: F401


def lapack_nuclear(m: np.ndarray) -> np.ndarray:
    """LAPACK's singular values (MKL's gesdd through torch, on one thread: numpy's OpenBLAS
    threads crawl on this shared 2-core machine), summed."""
    return torch.linalg.svdvals(torch.from_numpy(m)).sum(-1).numpy()


def graded(rng: np.random.Generator, batch: int, n: int, low: float) -> np.ndarray:
    """Matrices with singular values spread geometrically from 1 down to ``low``."""
    u = torch.linalg.qr(torch.from_numpy(rng.standard_normal((batch, n, n))))[0].numpy()
    v = torch.linalg.qr(torch.from_numpy(rng.standard_normal((batch, n, n))))[0].numpy()
    return (u * np.logspace(0, math.log10(low), n)) @ np.swapaxes(v, 1, 2)


def families(rng: np.random.Generator, n: int, batch: int) -> dict[str, np.ndarray]:
    """Test matrices scaled to unit Frobenius norm, as the filter path's products are (the
    budget of the error check is absolute)."""
    u, v = rng.standard_normal((batch, n, 3)), rng.standard_normal((batch, 3, n))
    zero_rows = rng.standard_normal((batch, n, n))
    zero_rows[:, : n // 2] = 0
    out = {"random": rng.standard_normal((batch, n, n)), "rank3": u @ v,
           "graded_1e-2": graded(rng, batch, n, 1e-2), "graded_1e-12": graded(rng, batch, n, 1e-12),
           "zero_rows": zero_rows}
    out = {k: m / np.linalg.norm(m, axis=(1, 2), keepdims=True) for k, m in out.items()}
    return out | {"zero": np.zeros((batch, n, n))}


@pytest.mark.parametrize("n", [14, 56, 224])
def test_eigen_path_is_within_1e10_of_lapack_whenever_it_passes(n):
    """The error check is what makes the eigen path safe: wherever it passes, the value is within
    1e-10 of LAPACK's singular values; where the spectrum makes sqrt(eigvalsh) inaccurate (low
    rank without a rank bound, graded down to 1e-12) it must fail, not return a wrong value."""
    rng = np.random.default_rng(n)
    batch = 4 if n == 224 else 12
    for name, m in families(rng, n, batch).items():
        want = lapack_nuclear(m)
        got, ok = eig_nuclear_norms(torch.from_numpy(m))
        assert got.dtype == torch.float64
        err = np.abs(got.numpy() - want)
        assert (err[ok.numpy()] <= 1e-10).all(), (name, err[ok.numpy()].max())
        if name in ("graded_1e-2", "zero"):
            assert ok.all(), name  # benign spectra take the fast path
        if name == "random":
            assert ok.float().mean() >= 0.5  # square Gaussian: sigma_min ~ sigma_max / n, some fail
        if name in ("rank3", "graded_1e-12", "zero_rows"):
            assert not ok.any(), name  # sqrt of eigenvalues ~ eps * lambda_max: off by ~1e-8 each
            assert err.max() > 1e-10, f"{name}: this family should defeat plain sqrt(eigvalsh)"


def test_known_rank_makes_exact_zeros_free():
    """With the rank bound the eigenvalues beyond it count as exact zeros: low-rank matrices then
    pass, within 1e-10, where without it they must fall back."""
    rng = np.random.default_rng(1)
    for n, r in [(14, 3), (56, 20), (224, 100)]:
        m = rng.standard_normal((3, n, r)) @ rng.standard_normal((3, r, n))
        m /= np.linalg.norm(m, axis=(1, 2), keepdims=True)
        got, ok = eig_nuclear_norms(torch.from_numpy(m), rank=torch.full((3,), r))
        assert ok.all()
        np.testing.assert_allclose(got.numpy(), lapack_nuclear(m), atol=1e-10, rtol=0)
        assert not eig_nuclear_norms(torch.from_numpy(m))[1].any()


def test_rectangular_matrices_use_the_smaller_gram():
    rng = np.random.default_rng(2)
    for shape in [(5, 30, 7), (5, 7, 30)]:
        m = rng.standard_normal(shape) / 10
        got, ok = eig_nuclear_norms(torch.from_numpy(m))
        assert ok.all()
        np.testing.assert_allclose(got.numpy(), lapack_nuclear(m), atol=1e-12, rtol=0)
        np.testing.assert_allclose(svd_nuclear_norms(torch.from_numpy(m)).numpy(), lapack_nuclear(m), atol=1e-12)


def test_thread_helpers_restore_and_parallel_map_keeps_order():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with lapack_threads(64):
        assert torch.get_num_threads() == 1
    with lapack_threads(linalg.SMALL_LAPACK + 1):
        assert torch.get_num_threads() == before
    seen = []

    def work(i):
        seen.append(torch.get_num_threads())
        return torch.linalg.svdvals(torch.full((3, 3), float(i), dtype=torch.float64)).sum()

    items = list(range(7))
    assert [float(v) for v in parallel_map(work, items, 3)] == [float(work(i)) for i in items]
    assert seen[:7] == [1] * 7 and torch.get_num_threads() == before


def test_gpu_benchmark_code_runs_on_the_cpu():
    """benchmarks/bench_metrics.py --smoke: the GPU part's code (accumulator rate, polar filter
    path against batched eigvalsh, CPU/device agreement) at small sizes on the CPU."""
    spec = importlib.util.spec_from_file_location("bench_metrics", REPO / "benchmarks" / "bench_metrics.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.gpu_part(600, 16, 1, dev="cpu", filter_pairs=4, filter_size=20)
    assert out["cpu_device_max_diff_metrics"] < 1e-8 and out["cpu_device_max_diff_filters"] < 1e-8
    assert out["filter"]["max_abs_error"] < 1e-8 and out["max_abs_diff"] < 1e-8
    assert out["matmul_fraction"] > 0


def test_dead_units_keep_the_nuclear_norm_on_its_eigenvalue_path(monkeypatch):
    """A dead unit (a channel constant over the probe set) makes its row of X^T Y exactly zero. The
    rows and columns zero in the whole batch are dropped: the same singular values, and no exact
    zero eigenvalue to send the matrix to the SVD (which must not run here: it would be ~4x slower
    at 2048 channels). Lines zero in one matrix of a batch only are kept, and the SVD still
    catches a matrix they make singular."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((400, 60)), rng.standard_normal((400, 50))
    x[:, [3, 17, 40]] = 0.0  # dead units of each side
    y[:, [0, 9]] = 0.0
    m = x.T @ y
    want = float(lapack_nuclear(m))
    svdvals = torch.linalg.svdvals

    def no_svd(*args, **kwargs):
        raise AssertionError("the SVD ran")

    monkeypatch.setattr(torch.linalg, "svdvals", no_svd)
    assert float(nuclear_norm(torch.from_numpy(m), drop_zero_lines=True)) == pytest.approx(want, rel=1e-13)
    batch = torch.from_numpy(np.stack([m, 2 * m]))
    np.testing.assert_allclose(nuclear_norm(batch, drop_zero_lines=True).numpy(), [want, 2 * want], rtol=1e-13)
    assert float(nuclear_norm(torch.zeros(5, 4, dtype=torch.float64), drop_zero_lines=True)) == 0.0
    # Procrustes of layers with dead units takes that path, and keeps its value (scipy's reference)
    from featdyn.engine.metrics import distance

    from metric_reference import ref_procrustes

    assert distance("procrustes", x, y, device="cpu") == pytest.approx(ref_procrustes(x, y), abs=1e-12)
    monkeypatch.setattr(torch.linalg, "svdvals", svdvals)
    other = m.copy()
    other[5] = 0.0  # zero in this matrix only: kept, the SVD takes it
    got = nuclear_norm(torch.from_numpy(np.stack([m, other])), drop_zero_lines=True).numpy()
    np.testing.assert_allclose(got, [want, float(lapack_nuclear(other))], rtol=1e-13)
