"""featdyn's metrics against independent float64 references (tests/metric_reference.py: numpy/scipy
SVDs of the data, written from the formulas) to 1e-9, and pwsm against netrep's definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from featdyn.engine.metrics import distance, distances

from metric_reference import KINDS, REFERENCES, make_pair, netrep_linear_metric, single_thread, unit_mean_eigenvalue  # noqa: F401

CASES = [("procrustes", {}), ("cka", {}), ("cca", {}), ("pwsm", {"alpha": 0.0}), ("pwsm", {"alpha": 0.3}),
         ("pwsm", {"alpha": 0.8}), ("pwsm", {"alpha": 1.0})]
IDS = [f"{n}{p.get('alpha', '')}" for n, p in CASES]
ATOL = 1e-9


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
@settings(max_examples=20, deadline=None, derandomize=True)
@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 2**31 - 1), n=st.integers(30, 200),
       c=st.integers(3, 12), narrower_y=st.booleans())
def test_agrees_with_svd_reference(name, params, kind, seed, n, c, narrower_y):
    x, y = make_pair(kind, n, c, 0.7, np.random.default_rng(seed))
    if narrower_y:  # representations of different widths
        y = y[:, : c - 1]
    ours = distance(name, x, y, device="cpu", **params)
    assert ours == pytest.approx(REFERENCES[name](x, y, **params), abs=ATOL)


@pytest.mark.parametrize("kind", KINDS)
def test_all_metrics_at_once_equal_one_at_a_time(kind):
    x, y = make_pair(kind, 120, 9, 0.5, np.random.default_rng(7))
    blocks = {f"{n}{p.get('alpha', '')}": {"kind": n, **p} for n, p in CASES}
    together = distances(x, y, blocks, device="cpu")
    for (label, _block), (name, params) in zip(blocks.items(), CASES):
        assert together[label] == pytest.approx(REFERENCES[name](x, y, **params), abs=ATOL)
        assert together[label] == distance(name, x, y, device="cpu", **params)


def test_float32_and_torch_inputs_are_computed_in_float64():
    x, y = make_pair("dead_units", 150, 10, 0.4, np.random.default_rng(8))
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    for name, params in CASES:
        want = REFERENCES[name](x32.astype(np.float64), y32.astype(np.float64), **params)
        assert distance(name, x32, y32, device="cpu", **params) == pytest.approx(want, abs=ATOL)
        assert distance(name, torch.from_numpy(x32), torch.from_numpy(y32), device="cpu", **params) == \
            pytest.approx(want, abs=ATOL)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_pwsm_equals_netrep_on_inputs_scaled_to_unit_mean_eigenvalue(alpha):
    """netrep whitens with the raw X^T X; on inputs whose centred X^T X has unit mean eigenvalue it
    computes our scale-free definition exactly."""
    for seed in range(3):
        x, y = make_pair("random", 80, 6, 0.8, np.random.default_rng(seed))
        ours = distance("pwsm", x, y, device="cpu", alpha=alpha)
        theirs = netrep_linear_metric(unit_mean_eigenvalue(x), unit_mean_eigenvalue(y), alpha)
        assert ours == pytest.approx(theirs, abs=ATOL)


def test_netrep_depends_on_the_activation_scale_and_we_do_not():
    x, y = make_pair("random", 80, 6, 0.8, np.random.default_rng(9))
    ux, uy = unit_mean_eigenvalue(x), unit_mean_eigenvalue(y)
    # partial whitening: netrep's value moves with the scale of the activations, ours does not
    assert abs(netrep_linear_metric(30 * ux, 30 * uy, 0.5) - netrep_linear_metric(ux, uy, 0.5)) > 1e-3
    assert distance("pwsm", 30 * x, 30 * y, device="cpu", alpha=0.5) == \
        pytest.approx(distance("pwsm", x, y, device="cpu", alpha=0.5), abs=ATOL)
    # at the ends (alpha = 0, 1) the scale cancels in netrep too
    for alpha in (0.0, 1.0):
        assert netrep_linear_metric(30 * ux, 30 * uy, alpha) == pytest.approx(
            netrep_linear_metric(ux, uy, alpha), abs=ATOL)


def test_source_against_itself_is_zero_on_ill_conditioned_data():
    """A model compared with itself (epoch 0) must give 0 even when its channels span six decades
    of variance: the whitened norms are measured on the whitening actually applied."""
    rng = np.random.default_rng(10)
    x = rng.standard_normal((3000, 32)) * np.logspace(0, -6, 32) + 1.0
    for name, params in CASES:
        assert distance(name, x, x, device="cpu", **params) < 1e-7
