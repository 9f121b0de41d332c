"""The noise floor and the permutation null of a metric that reads a token layer's class token or
mean patch token (`tokens: cls | mean`) use that reading, as its distances to the source do: each
value of the score table equals the metric computed directly on the tokens arranged by hand."""

from __future__ import annotations

import numpy as np
import pytest

from featdyn.data.stores import StoreWriter
from featdyn.engine.floor import score_run
from featdyn.engine.metrics import distance
from featdyn.engine.noise import (
    null_stats_from_store,
    permutations,
    replicate_pair_stats,
    save_full_pairs,
    save_null,
)
from featdyn.engine.similarity import pair_group_stats_from_stores, source_group_stats_from_store
from featdyn.engine.stats import load_sides, save_pairs, save_sides
from featdyn.spec.layouts import prefix_name

N, C, H, W = 12, 5, 3, 3  # images, channels, patch grid
LAYOUTS = {"enc": {"layout": "NTC", "prefix": 1, "grid": [H, W], "captured": [1 + H * W, C], "by": "rule"},
           "conv": {"layout": "NCHW", "prefix": 0, "grid": [H, W], "captured": [C, H, W], "by": "rule"}}
TOKENS = ["cls", "mean"]


def tokens_of(seed: int, base: np.ndarray | None = None) -> np.ndarray:
    """(N, 1 + H W, C) tokens: a class token and a patch grid; near ``base`` when given (a replicate)."""
    t = np.random.default_rng(seed).standard_normal((N, 1 + H * W, C))
    return f32(t if base is None else base + 0.4 * t)


def f32(a: np.ndarray) -> np.ndarray:
    """The values a float32 store holds, in float64: the references compute on what is stored."""
    return a.astype(np.float32).astype(np.float64)


def write(path, tokens: np.ndarray, conv: np.ndarray, epoch: int) -> None:
    """A store as extraction writes it: the patch grid channels-first, the class token beside it."""
    attrs = {"epoch": epoch, "probe_sha256": "p", "image_size": 48, "model": "m", "dataset": "d",
             "layouts": LAYOUTS}
    grid = tokens[:, 1:].reshape(N, H, W, C).transpose(0, 3, 1, 2)
    with StoreWriter(path, N, ["enc", "conv"], attrs, chunk=5) as w:
        for i in range(0, N, 5):
            s = slice(i, i + 5)
            w.write(i, {"enc": grid[s], prefix_name("enc"): tokens[s, :1].transpose(0, 2, 1), "conv": conv[s]},
                    np.arange(N)[s] % 2, np.arange(N)[s])


def reading(tokens: np.ndarray, how: str) -> np.ndarray:
    return tokens[:, 0] if how == "cls" else tokens[:, 1:].mean(1)


@pytest.mark.parametrize("how", TOKENS)
def test_floor_and_null_of_a_token_reading_equal_direct_computations(tmp_path, how):
    rng = np.random.default_rng(0)
    conv = f32(rng.standard_normal((N, C, H, W)))
    source = tokens_of(1)
    reps = [tokens_of(2, source), tokens_of(3, source)]  # epoch 1 of replicates 0 and 1
    write(tmp_path / "src.zarr", source, conv, 0)
    for r, t in enumerate(reps):
        write(tmp_path / f"r{r}.zarr", t, f32(conv + 0.1 * r), 1)

    sides, _ = source_group_stats_from_store(tmp_path / "src.zarr", tokens=TOKENS)
    save_sides(tmp_path / "source.npz", sides)
    epochs = []
    for r in range(2):
        for e, store in ((0, "src"), (1, f"r{r}")):
            pairs, _ = pair_group_stats_from_stores(tmp_path / "src.zarr", tmp_path / f"{store}.zarr", sides,
                                                    tokens=TOKENS)
            save_pairs(tmp_path / f"p{r}_{e}.npz", pairs)
            epochs.append(tmp_path / f"p{r}_{e}.npz")
    # between the replicates at epochs 0 and 1; the null of the source store
    save_full_pairs(tmp_path / "pair_0.npz", replicate_pair_stats(tmp_path / "src.zarr", tmp_path / "src.zarr",
                                                                  tokens=TOKENS))
    save_full_pairs(tmp_path / "pair_1.npz", replicate_pair_stats(tmp_path / "r0.zarr", tmp_path / "r1.zarr",
                                                                  tokens=TOKENS))
    save_null(tmp_path / "null.npz", null_stats_from_store(tmp_path / "src.zarr", load_sides(tmp_path / "source.npz"),
                                                           2, 0, tokens=TOKENS))
    block = {"kind": "procrustes", "granularity": "layer", "tokens": how}
    inputs = {"epochs": [str(p) for p in epochs], "groups": [], "source": [str(tmp_path / "source.npz")] * 2,
              "source_groups": [None, None], "pairs": [str(tmp_path / "pair_0.npz"), str(tmp_path / "pair_1.npz")],
              "null": str(tmp_path / "null.npz")}
    table, _ = score_run(block, model="m", dataset="d", metric="p", epochs=[0, 1], k=2, inputs=inputs,
                         null_count=2)

    def rows(comparison, layer):
        return table[(table["comparison"] == comparison) & (table["layer"] == layer)]

    x, y0, y1 = (reading(t, how) for t in (source, *reps))
    src = rows("source", "enc")
    assert src[src["epoch"] == 1]["value"].tolist() == pytest.approx([distance("procrustes", x, y0),
                                                                       distance("procrustes", x, y1)], abs=1e-10)
    floor = rows("replicates", "enc")
    assert floor[floor["epoch"] == 1]["value"].item() == pytest.approx(distance("procrustes", y0, y1), abs=1e-10)
    # the null: whole images permuted, their tokens with them
    null = rows("permutation", "enc").sort_values("replicate")["value"].tolist()
    want = [distance("procrustes", x, x[p]) for p in permutations(N, 2, 0)]
    assert null == pytest.approx(want, abs=1e-10)
    assert src["null"].tolist() == pytest.approx([np.mean(want)] * 4, abs=1e-10)
    assert src[src["epoch"] == 1]["floor"].tolist() == pytest.approx([distance("procrustes", y0, y1)] * 2, abs=1e-10)
    # the patch grid's floor is another number (the reading matters), and a map layer reads as it is
    patches = reps[0][:, 1:].reshape(-1, C), reps[1][:, 1:].reshape(-1, C)
    assert abs(distance("procrustes", *patches) - floor[floor["epoch"] == 1]["value"].item()) > 1e-3
    conv_floor = rows("replicates", "conv")
    flat = [f32(conv + 0.1 * r).transpose(0, 2, 3, 1).reshape(-1, C) for r in range(2)]
    assert conv_floor[conv_floor["epoch"] == 1]["value"].item() == pytest.approx(distance("procrustes", *flat),
                                                                                 abs=1e-10)
