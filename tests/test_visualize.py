"""The qualitative stage's library: class-average patches (a planted pattern, weights, dead
filters, clipping at the borders), aligned heatmaps and their shared colour scale, the choice of
units and the visualize block's checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from featdyn import FeatdynError
from featdyn.nets.receptive_field import receptive_field
from featdyn.report.figures import heatmap_grid
from featdyn.report.heatmaps import aligned_map, interpolation_matrix, row_limits, unit_centres
from featdyn.report.patches import class_patch, display_window, strongest_unit
from featdyn.report.units import (
    choose_units,
    explicit_classes,
    explicit_filters,
    pick_images,
    rank_classes,
    rank_filters,
    resolve_layers,
)
from featdyn.report.visualize import HeatmapRow
from featdyn.spec import config as fdconfig


def visualize_defaults(block: dict) -> dict:
    """A ``visualize`` block with the schema's defaults filled in, as the workflow does."""
    return fdconfig.with_defaults({"models": {}, "datasets": {}, "metrics": {}, "visualize": block})["visualize"]

S = 32


def box_detector() -> nn.Module:
    """One filter that sums the brightness of a 5 x 5 window, stride 2 (padding 2): 16 x 16 units,
    each centred on pixel (2u, 2v)."""
    net = nn.Sequential(nn.Conv2d(3, 1, 5, stride=2, padding=2, bias=False), nn.ReLU())
    with torch.no_grad():
        net[0].weight.fill_(1.0 / 75)
    return net.eval()


def planted(n: int, corners: list[tuple[int, int]], seed: int = 0) -> np.ndarray:
    """Dark noise images, each with a bright 5 x 5 square whose top-left corner is ``corners[i]``."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(n, S, S, 3), dtype=np.uint8)
    for img, (y, x) in zip(images, corners):
        img[y:y + 5, x:x + 5] = 250
    return images


def maps_of(net: nn.Module, images: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return net(x)[:, 0].numpy().astype(np.float64)


# -- class-average patches ------------------------------------------------------------------------

def test_planted_pattern_lands_at_the_centre_of_the_average():
    net = box_detector()
    rf = receptive_field(net, "1", S)
    assert (rf.size, rf.stride, rf.offset) == ((5, 5), (2, 2), (-2, -2))
    corners = [(4, 6), (10, 20), (20, 8), (14, 14), (24, 24), (6, 26)]  # even corners: a unit centred on each
    images = planted(len(corners), corners)
    maps = maps_of(net, images)
    for (y, x), m in zip(corners, maps):
        u, v, _ = strongest_unit(m)
        assert rf.box(u, v) == (y, x, y + 5, x + 5), "the strongest unit's box is the planted square"
    patch = class_patch(images, maps, rf)
    mean = patch.mean()
    assert mean.shape == (5, 5, 3) and patch.responding == len(corners)
    assert mean.min() > 245, "every crop is the bright square: the average is the square"
    # Bright corners cut by the border (black elsewhere): the strongest units' windows reach
    # outside the image; the crops are padded so that the unit's centre stays at the patch centre.
    images = np.zeros((2, S, S, 3), dtype=np.uint8)
    images[0, :3, :3] = 250      # top left: units (0, 0) and (1, 1) tie; the first wins
    images[1, 29:, 29:] = 250    # bottom right: unit (15, 15), centred on pixel 30
    maps = maps_of(net, images)
    assert [strongest_unit(m)[:2] for m in maps] == [(0, 0), (15, 15)]
    assert rf.window(0, 0) == (-2, -2, 3, 3) and rf.box(0, 0) == (0, 0, 3, 3)
    assert rf.window(15, 15) == (28, 28, 33, 33) and rf.box(15, 15) == (28, 28, 32, 32)
    patch = class_patch(images, maps, rf)
    mean = patch.mean()
    w0, w1 = maps[0].max(), maps[1].max()
    assert mean[2, 2].tolist() == [250.0] * 3, "both images' bright pixel at the unit centre"
    np.testing.assert_allclose(patch.coverage[2:4, 2:4], w0 + w1)   # both crops cover the middle
    np.testing.assert_allclose(patch.coverage[0, 0], w1)             # padding of the top-left crop
    np.testing.assert_allclose(patch.coverage[4, 4], w0)             # padding of the bottom-right crop
    assert patch.coverage[0, 4] == 0 and np.isnan(mean[0, 4]).all(), "outside every image: uncovered, not black"


def test_weighted_mean_formula_dead_images_and_dead_classes():
    rf = receptive_field(nn.Sequential(nn.Conv2d(3, 1, 1), nn.Identity()), "1", 4)  # one pixel per unit
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 4, 4, 3), dtype=np.uint8)
    maps = np.zeros((4, 4, 4))
    maps[0, 1, 2] = 2.0       # weight 2 at pixel (1, 2)
    maps[1, 1, 2] = 6.0       # weight 6 at the same pixel
    maps[2] -= 1.0            # maximum below 0: weight 0
    maps[2, 3, 3] = -0.5
    # image 3: all zero: weight 0
    patch = class_patch(images, maps, rf)
    assert patch.weight == 8.0 and patch.responding == 2 and patch.images == 4
    want = (2 * images[0, 1, 2].astype(float) + 6 * images[1, 1, 2].astype(float)) / 8.0
    np.testing.assert_allclose(patch.mean()[0, 0], want)
    dead = class_patch(images, -np.abs(maps), rf)
    assert dead.dead and dead.mean() is None and dead.responding == 0


def test_patch_inputs_are_checked():
    rf = receptive_field(box_detector(), "1", S)
    images = planted(2, [(0, 0), (4, 4)])
    with pytest.raises(FeatdynError, match="do not match"):
        class_patch(images, np.zeros((2, 8, 8)), rf)
    bad = np.zeros((2, 16, 16))
    bad[0, 0, 0] = np.nan
    with pytest.raises(FeatdynError, match="NaN"):
        class_patch(images, bad, rf)


def test_display_window_trims_a_deep_field_evenly():
    from featdyn.nets.models import construct

    rf = receptive_field(construct("vgg19", meta=True), "features.35", 224)   # 252 px field, offset -118
    (ylo, yhi), (xlo, xhi) = display_window(rf)
    # an image pixel lands in window columns [p - 16u + 118] for p in 0..223, u in 0..13:
    # [118 - 208, 223 + 118] = [-90, 341] -> [0, 252); nothing to trim
    assert (ylo, yhi) == (0, 252) and (xlo, xhi) == (0, 252)
    deep = receptive_field(construct("densenet121", meta=True), "features.denseblock4.denselayer16.relu2", 224)
    (ylo, yhi), _ = display_window(deep)
    k = deep.size[0]
    assert yhi - ylo < k and ylo == k - yhi, "trimmed by the same amount on both sides: the centre stays"
    assert (ylo + yhi - 1) / 2 == (k - 1) / 2


# -- heatmaps ---------------------------------------------------------------------------------------

def test_heatmap_is_aligned_on_the_receptive_field_centres():
    rf = receptive_field(box_detector(), "1", S)
    cy, cx = unit_centres(rf)
    np.testing.assert_array_equal(cy, 2 * np.arange(16))  # unit u centred on pixel 2u
    fmap = np.zeros((16, 16))
    fmap[5, 9] = 1.0
    up = aligned_map(fmap, rf)
    assert up.shape == (S, S)
    assert np.unravel_index(np.argmax(up), up.shape) == (10, 18) and up[10, 18] == 1.0
    w = interpolation_matrix(cy, S)
    np.testing.assert_allclose(w.sum(1), 1.0)
    assert up.min() >= 0 and up.max() <= 1, "linear interpolation stays within the map's range"


def test_resnet_centres_are_not_the_naive_ones():
    from featdyn.nets.models import construct

    rf = receptive_field(construct("resnet50", meta=True), "layer3.5", 224)
    cy, _ = unit_centres(rf)
    np.testing.assert_array_equal(cy, 16 * np.arange(14))
    naive = (np.arange(14) + 0.5) * 224 / 14 - 0.5     # what a plain image resize assumes
    assert np.allclose(naive - cy, 7.5)


def test_one_colour_scale_per_row_from_the_rows_data():
    rf = receptive_field(box_detector(), "1", S)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(S, S, 3), dtype=np.uint8)
    rows = []
    for scale in (1.0, 10.0):
        raw = [scale * (e + 1) * rng.random((16, 16)) - scale * 0.1 * e for e in range(3)]
        rows.append(HeatmapRow(image, 7, "c", "1", 0, [aligned_map(m, rf) for m in raw], row_limits(raw)))
        lo, hi = rows[-1].limits
        assert lo == min(m.min() for m in raw) and hi == max(m.max() for m in raw)
    fig, layout = heatmap_grid(rows, [0, 1, 2], title="t")
    assert (layout["rows"], layout["cols"]) == (2, 3)
    for r, row in enumerate(rows):
        overlays = [ax.get_images()[-1] for ax in fig.axes[r * 3:(r + 1) * 3]]
        assert {o.get_clim() for o in overlays} == {row.limits}, "every epoch of a row has the row's scale"
    assert rows[0].limits != rows[1].limits


# -- which units ------------------------------------------------------------------------------------

def test_rank_filters_most_and_least_changed_without_dead_ones():
    change = np.array([0.3, np.nan, 0.9, 0.1, 0.9, 0.05, np.nan])
    chosen = rank_filters(change, 3, "x")
    assert [f for f, _ in chosen] == [2, 4, 5]   # two most (tie: lower index first), one least
    assert "most changed" in chosen[0][1] and "least changed" in chosen[2][1]
    assert [f for f, _ in rank_filters(change, 1, "x")] == [2]
    assert len(rank_filters(change, 20, "x")) == 5, "never a dead filter, never one twice"
    with pytest.raises(FeatdynError, match="dead"):
        rank_filters(np.full(4, np.nan), 2, "x")


def test_classes_images_layers_and_explicit_choices():
    labels = np.array([0, 0, 1, 1, 2, 2])
    responses = np.array([1.0, 1.0, 5.0, 3.0, 0.0, 0.0])
    assert [k for k, _ in rank_classes(responses, labels, ["a", "b", "c"], 2)] == [1, 0]
    assert explicit_classes(["c", "a"], ["a", "b", "c"], "k") == [2, 0]
    with pytest.raises(FeatdynError, match="visualize.patches.classes.*zebra"):
        explicit_classes(["zebra"], ["a", "b"], "visualize.patches.classes")
    index = np.array([10, 11, 20, 21, 30, 31])
    assert [r for r, _ in pick_images(4, labels, index, ["a", "b", "c"], "k")] == [0, 2, 4, 1]
    assert [r for r, _ in pick_images([21, 10], labels, index, ["a", "b", "c"], "k")] == [3, 0]
    with pytest.raises(FeatdynError, match="visualize.heatmaps.images.*99"):
        pick_images([99], labels, index, ["a", "b", "c"], "visualize.heatmaps.images")
    layers = ["l0", "l1", "l2", "l3"]
    assert resolve_layers([-1, 0, "l2"], layers, "k") == ["l0", "l2", "l3"]
    with pytest.raises(FeatdynError, match="position 4"):
        resolve_layers([4], layers, "k")
    with pytest.raises(FeatdynError, match="'l9' is not captured"):
        resolve_layers(["l9"], layers, "k")
    assert explicit_filters(2, "l0", 8, "k") is None
    assert explicit_filters({"l0": [3, 1]}, "l0", 8, "k") == [3, 1]
    with pytest.raises(FeatdynError, match=r"k\.l0: filters \[8\]"):
        explicit_filters({"l0": [8]}, "l0", 8, "k")


def test_choose_units_table():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 3)
    maps = {("l0", f): rng.random((9, 4, 4)) for f in range(4)} | {("l1", f): rng.random((9, 2, 2)) for f in range(6)}
    calls = []

    def change(layer):
        calls.append(layer)
        return np.arange({"l0": 4, "l1": 6}[layer], dtype=float)

    block = visualize_defaults({"patches": {"layers": [-1], "filters": 2, "classes": 2},
                           "heatmaps": {"layers": ["l0"], "filters": [1], "images": 2}})
    df = choose_units(block, model="m", dataset="d", layers=["l0", "l1"], channels={"l0": 4, "l1": 6},
                      names=["a", "b", "c"], labels=labels, index=np.arange(100, 109),
                      paths=[f"p{i}" for i in range(9)], change=change,
                      source_maps=lambda layer, f: maps[(layer, f)], rank_source="test")
    patches, heat = df[df["figure"] == "patches"], df[df["figure"] == "heatmaps"]
    assert list(patches["filter"]) == [5, 5, 0, 0] and set(patches["layer"]) == {"l1"}
    assert len(heat) == 2 and list(heat["image"]) == [100, 103] and list(heat["filter"]) == [1, 1]
    assert list(heat["path"]) == ["p0", "p3"] and heat["reason"].str.contains("given in").all()
    assert calls == ["l1"], "changes are computed only for the layers that rank filters"
    assert df["reason"].str.len().gt(0).all()


def test_visualize_block_checks_name_the_key():
    cfg = {"models": {"m": {"arch": "mobilenet_v2", "layers": ["features.1", "features.3"]}},
           "datasets": {"d": {"demo": "digits"}}, "training": {"epochs": 2},
           "metrics": {"p": {"kind": "procrustes"}, "pf": {"kind": "procrustes", "granularity": "filter"}}}
    filled = fdconfig.with_defaults
    assert fdconfig.rank_metric(filled(cfg)) == "pf"
    assert fdconfig.visual_epochs(filled(cfg | {"visualize": {"epochs": [2]}}), "m", "d") == [0, 2]
    for block, key in [({"rank_by": "p"}, "visualize.rank_by"),
                       ({"patches": {"layers": ["features.2"]}}, "visualize.patches.layers"),
                       ({"heatmaps": {"layers": [5]}}, "visualize.heatmaps.layers"),
                       ({"heatmaps": {"filters": {"features.1": [0]}}}, "visualize.heatmaps.filters"),
                       ({"epochs": [3]}, "visualize.epochs")]:
        with pytest.raises(FeatdynError, match=key.replace(".", r"\.")):
            fdconfig.check_visualize(filled(cfg | {"visualize": block}))
    fdconfig.check_visualize(filled(cfg | {"visualize": {"rank_by": "stores", "patches": {"layers": ["features.3"]}}}))
    assert fdconfig.rank_metric(filled(cfg | {"visualize": {"rank_by": "stores"}})) is None
    # a misspelt key of the block is refused by the schema, with the closest valid key
    from featdyn.spec.schema import check_keys

    from conftest import REPO

    with pytest.raises(FeatdynError, match=r"visualize\.patches\.clases.*visualize\.patches\.classes"):
        check_keys(cfg | {"visualize": {"patches": {"clases": 2}}}, REPO / "workflow/schemas/config.schema.yaml")
    check_keys(cfg | {"visualize": {"patches": {"filters": {"features.1": [0]}}, "heatmaps": {"images": [3]}}},
               REPO / "workflow/schemas/config.schema.yaml")


# -- through real stores and an image cache ------------------------------------------------------------

def make_run(tmp_path, maps_by_epoch: dict[int, np.ndarray], labels: np.ndarray):
    """A prepared dataset (manifest + uint8 cache, every image a probe image) and one activation
    store per epoch holding ``maps_by_epoch[e]`` as layer '1' (chunks of 4 images)."""
    import pandas as pd

    from featdyn.data.datasets import MANIFEST_COLUMNS, ImageCache, probe_hash
    from featdyn.data.stores import StoreWriter

    n = len(labels)
    data = tmp_path / "data"
    data.mkdir()
    manifest = pd.DataFrame({"index": np.arange(n), "path": [f"img_{i}.png" for i in range(n)], "label": labels,
                             "class": [f"c{k}" for k in labels], "split": "test", "probe": True})[MANIFEST_COLUMNS]
    manifest.to_csv(data / "manifest.csv", index=False)
    images = np.random.default_rng(1).integers(0, 256, size=(n, S, S, 3), dtype=np.uint8)
    np.save(data / "cache.npy", images)
    attrs = {"probe_sha256": probe_hash(manifest.assign(probe=True)), "image_size": S, "model": "m",
             "dataset": "d", "arch": "box"}
    paths = {}
    for e, maps in maps_by_epoch.items():
        paths[e] = tmp_path / f"epoch_{e}.zarr"
        with StoreWriter(paths[e], n, ["1"], attrs | {"epoch": e}, chunk=4) as w:
            w.write(0, {"1": maps.astype(np.float32)}, labels, np.arange(n))
    return ImageCache(data), paths, images


def test_units_patches_and_heatmaps_from_stores(tmp_path):
    from featdyn.engine.filterwise import filter_scores
    from featdyn.report.visualize import heatmap_rows, open_stores, patch_rows, units_for_run

    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 0, 1, 1, 0, 0, 1, 1, 0])
    m0 = rng.random((10, 3, 16, 16))
    # filter 0 unchanged, filter 1 a little noise, filter 2 replaced: most changed is 2, least 0
    m1 = m0.copy()
    m1[:, 1] += 0.05 * rng.random((10, 16, 16))
    m1[:, 2] = rng.random((10, 16, 16))
    cache, paths, images = make_run(tmp_path, {0: m0, 1: m1}, labels)
    stores = open_stores(paths)
    block = visualize_defaults({"patches": {"layers": [0], "filters": 2, "classes": 1},
                           "heatmaps": {"layers": [0], "filters": [1], "images": [7, 2]}})
    units = units_for_run(block, model="m", dataset="d", cache=cache, source=stores[0], last=stores[1],
                          last_epoch=1)
    want = filter_scores("procrustes", m0.astype(np.float32), m1.astype(np.float32), labels).per_filter()
    assert np.argmax(want) == 2 and np.argmin(want) == 0
    patches = units[units["figure"] == "patches"]
    assert list(patches["filter"]) == [2, 0] and patches["reason"].str.contains("from the stores").all()
    heat = units[units["figure"] == "heatmaps"]
    assert list(heat["image"]) == [7, 2] and list(heat["path"]) == ["img_7.png", "img_2.png"]

    rf = receptive_field(box_detector(), "1", S)
    rows = patch_rows(units, stores, cache, {"1": rf}, [0, 1])
    for row, unit in zip(rows, patches.to_dict("records")):
        mask = labels == unit["label"]
        for e, maps in enumerate((m0, m1)):
            expect = class_patch(images[mask], maps[mask, unit["filter"]].astype(np.float32), rf)
            np.testing.assert_allclose(row.patches[e].total, expect.total)
            assert row.patches[e].units == expect.units
    hrows = heatmap_rows(units, stores, cache, {"1": rf}, [0, 1])
    for row, image in zip(hrows, (7, 2)):
        np.testing.assert_array_equal(row.image, images[image])
        raw = [m[image, 1].astype(np.float32) for m in (m0, m1)]
        np.testing.assert_allclose(row.maps[1], aligned_map(raw[1], rf))
        assert row.limits == row_limits(raw)
    with pytest.raises(FeatdynError, match="epoch 0"):
        open_stores({1: paths[1]})
    with pytest.raises(FeatdynError, match="holds epoch 1, expected 2"):
        open_stores({0: paths[0], 2: paths[1]})
