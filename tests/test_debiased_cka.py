"""Debiased linear CKA (metrics.<name>.debiased: true) from streamed statistics: against the unbiased
HSIC formula on n x n Gram matrices, centred near 0 for independent features where the plug-in CKA
is not, and exact through the per-image-group statistics of the bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from featdyn import FeatdynError
from featdyn.engine.metrics import distance, from_stats
from featdyn.engine.stats import Accumulator, GroupAccumulator, GroupStats, PairStats, image_groups
from featdyn.spec.config import metric_params


def hsic_u(k: np.ndarray, l_: np.ndarray) -> float:
    """Song et al. (2012), Eq. 5, on n x n kernel matrices."""
    n = k.shape[0]
    k, l_ = k.copy(), l_.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l_, 0.0)
    one = np.ones(n)
    return float((np.trace(k @ l_) + (one @ k @ one) * (one @ l_ @ one) / ((n - 1) * (n - 2))
                  - 2.0 / (n - 2) * one @ k @ l_ @ one) / (n * (n - 3)))


def direct(x: np.ndarray, y: np.ndarray) -> float:
    k, l_ = x @ x.T, y @ y.T
    return 1.0 - hsic_u(k, l_) / np.sqrt(hsic_u(k, k) * hsic_u(l_, l_))


@pytest.mark.parametrize(("n", "cx", "cy", "seed"), [(5, 3, 2, 0), (12, 4, 6, 1), (40, 8, 8, 2), (60, 20, 3, 3)])
def test_equals_the_unbiased_hsic_formula_on_gram_matrices(n, cx, cy, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, cx)) * rng.uniform(0.1, 10, cx) + rng.normal(0, 5, cx)
    y = x[:, :1] @ rng.standard_normal((1, cy)) + rng.standard_normal((n, cy)) - 3.0
    assert distance("cka", x, y, device="cpu", debiased=True) == pytest.approx(direct(x, y), rel=1e-9, abs=1e-12)
    # streamed in blocks of a few rows: the same sums
    acc = Accumulator("cpu")
    for lo in range(0, n, 3):
        acc.update(x[lo:lo + 3], y[lo:lo + 3])
    assert from_stats("cka", acc.pair(), debiased=True) == pytest.approx(direct(x, y), rel=1e-9, abs=1e-12)


def test_independent_features_centre_debiased_cka_near_0_and_plug_in_cka_above():
    rng = np.random.default_rng(0)
    biased, debiased = [], []
    for _ in range(200):  # few observations per feature: where the plug-in estimator's bias shows
        x, y = rng.standard_normal((20, 10)), rng.standard_normal((20, 10))
        biased.append(1 - distance("cka", x, y, device="cpu"))
        debiased.append(1 - distance("cka", x, y, device="cpu", debiased=True))
    se = np.std(debiased) / np.sqrt(len(debiased))
    assert abs(np.mean(debiased)) < 3 * se + 0.01, (np.mean(debiased), se)
    assert np.mean(biased) > 0.25, "the plug-in CKA of independent features lies far above 0"
    # and both see a shared signal: dependent features are far from the null either way
    x = rng.standard_normal((20, 10))
    y = x @ rng.standard_normal((10, 10)) + 0.1 * rng.standard_normal((20, 10))
    assert 1 - distance("cka", x, y, device="cpu", debiased=True) > 0.5


def test_group_statistics_resample_debiased_cka_exactly():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((12, 4, 3, 3)) + 1.0
    y = 2.0 * rng.standard_normal((12, 5, 3, 3)) + x[:, :1].repeat(5, 1) - 4.0
    ids = image_groups(12, 4)
    g = GroupAccumulator(ids)
    g.update(0, x[:7], y[:7])
    g.update(7, x[7:], y[7:])
    stacked = GroupStats.stack(g.pairs())
    w = np.array([2, 0, 1, 1])
    chosen = np.concatenate([np.where(ids == k)[0] for k in range(4) for _ in range(w[k])])
    rows = lambda a: a[chosen].transpose(0, 2, 3, 1).reshape(-1, a.shape[1])  # noqa: E731
    want = direct(rows(x), rows(y))
    assert from_stats("cka", stacked.weighted(w), debiased=True) == pytest.approx(want, rel=1e-9)
    assert from_stats("cka", next(stacked.weighted_many(w[None])), debiased=True) == pytest.approx(want, rel=1e-9)


def test_statistics_without_the_per_observation_terms_are_refused_and_the_option_is_checked():
    rng = np.random.default_rng(5)
    acc = Accumulator("cpu")
    acc.update(rng.standard_normal((10, 3)), rng.standard_normal((10, 3)))
    p = acc.pair()
    bare = PairStats(type(p.x)(p.x.n, p.x.shift, p.x.sum, p.x.gram), type(p.y)(p.y.n, p.y.shift, p.y.sum, p.y.gram),
                     p.xy)
    with pytest.raises(FeatdynError, match="per-observation"):
        from_stats("cka", bare, debiased=True)
    assert from_stats("cka", bare) == pytest.approx(from_stats("cka", p))
    cfg = {"metrics": {"c": {"kind": "cka", "debiased": True}, "p": {"kind": "procrustes", "debiased": True}}}
    assert metric_params(cfg, "c") == {"kind": "cka", "granularity": "layer", "debiased": True}
    with pytest.raises(FeatdynError, match="debiased"):
        metric_params(cfg, "p")


def test_activations_too_large_for_fourth_powers_refuse_only_debiased_cka():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((30, 4)), rng.standard_normal((30, 4))
    # 1e100: squares fit float64 (the other metrics are unchanged), fourth powers do not
    assert distance("cka", x * 1e100, y, device="cpu") == pytest.approx(distance("cka", x, y, device="cpu"))
    with pytest.raises(FeatdynError, match="overflowed float64"):
        distance("cka", x * 1e100, y, device="cpu", debiased=True)
    assert distance("cka", x * 1e30, y, device="cpu", debiased=True) == pytest.approx(
        distance("cka", x, y, device="cpu", debiased=True), rel=1e-9)
