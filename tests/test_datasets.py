"""Split manifest, probe set and uint8 cache: determinism, stratification, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from featdyn import FeatdynError
from featdyn.data.datasets import (
    ImageCache,
    SplitSpec,
    build_manifest,
    check_tree,
    choose_classes,
    load_image,
    prepare,
    scan_tree,
)
from featdyn.data.prefetch import ordered_map

from conftest import make_tree


def uneven_tree(root: Path, sizes: dict[str, int]) -> dict[str, list[Path]]:
    """A scanned tree with the given number of (empty) files per class: the manifest only needs paths."""
    for cls, n in sizes.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            (root / cls / f"{i:03d}.png").touch()
    return scan_tree(root)


def test_split_is_stratified_seeded_and_disjoint(tmp_path):
    tree = uneven_tree(tmp_path / "t", {"a": 10, "b": 25, "c": 3, "d": 40})
    spec = SplitSpec(test_fraction=0.2, split_seed=5, probe_per_class=1)
    df = build_manifest(tree, spec)
    assert len(df) == 78 and df["path"].is_unique
    for cls, n in {"a": 10, "b": 25, "c": 3, "d": 40}.items():
        n_test = int(((df["class"] == cls) & (df["split"] == "test")).sum())
        assert n_test == min(max(1, round(0.2 * n)), n - 1), cls
    assert df.equals(build_manifest(tree, spec)), "same seed, same manifest"
    other = build_manifest(tree, SplitSpec(test_fraction=0.2, split_seed=6, probe_per_class=1))
    assert not df["split"].equals(other["split"]), "the split seed changes the split"
    # Labels follow the sorted class names; rows are complete.
    assert dict(zip(df["class"], df["label"])) == {"a": 0, "b": 1, "c": 2, "d": 3}
    assert list(df["index"]) == list(range(len(df)))


def test_probe_is_class_stratified_seeded_and_from_the_test_split(tmp_path):
    tree = uneven_tree(tmp_path / "t", {"x": 30, "y": 20, "z": 50})
    spec = SplitSpec(test_fraction=0.3, split_seed=0, probe_per_class=4, probe_seed=1)
    df = build_manifest(tree, spec)
    probe = df[df["probe"]]
    assert (probe["split"] == "test").all()
    assert probe.groupby("class").size().to_dict() == {"x": 4, "y": 4, "z": 4}
    assert probe.equals(build_manifest(tree, spec)[lambda d: d["probe"]])
    reseeded = build_manifest(tree, SplitSpec(test_fraction=0.3, split_seed=0, probe_per_class=4, probe_seed=2))
    assert set(reseeded[reseeded["probe"]]["path"]) != set(probe["path"])
    # A class's split and probe depend on its own name and the seeds only, not on the other classes.
    alone = build_manifest({"x": tree["x"]}, spec)
    assert set(alone[alone["probe"]]["path"]) == set(probe[probe["class"] == "x"]["path"])
    assert set(alone[alone["split"] == "test"]["path"]) == set(df[(df["class"] == "x") & (df["split"] == "test")]["path"])


def test_probe_larger_than_a_class_test_split_is_named(tmp_path):
    tree = uneven_tree(tmp_path / "t", {"big": 40, "small": 5})
    with pytest.raises(FeatdynError, match="'small'.*probe.per_class=3"):
        build_manifest(tree, SplitSpec(test_fraction=0.2, probe_per_class=3))


def test_class_draw_is_seeded_sorted_and_checked():
    names = [f"c{i:02d}" for i in range(30)]
    drawn = choose_classes(list(reversed(names)), 7, seed=112)
    assert drawn == sorted(drawn) and len(set(drawn)) == 7 and set(drawn) <= set(names)
    assert drawn == choose_classes(names, 7, seed=112), "the order of the listing does not matter"
    assert drawn != choose_classes(names, 7, seed=113)
    assert choose_classes(names, None, 0) == names
    with pytest.raises(FeatdynError, match="only 30"):
        choose_classes(names, 31, 0)


def test_train_test_pair_with_a_class_draw(tmp_path):
    train = uneven_tree(tmp_path / "Training", {f"fruit{i}": 6 for i in range(8)})
    test = uneven_tree(tmp_path / "Test", {f"fruit{i}": 3 for i in range(8)})
    spec = SplitSpec(probe_per_class=2, n_classes=3, class_seed=112)
    df = build_manifest(train, spec, test)
    classes = choose_classes(list(train), 3, 112)
    assert sorted(df["class"].unique()) == classes
    assert (df[df["split"] == "train"]["path"].str.contains("Training")).all()
    assert (df[df["split"] == "test"]["path"].str.contains("Test")).all()
    assert df.groupby(["class", "split"]).size().unstack().to_dict() == {"test": {c: 3 for c in classes},
                                                                         "train": {c: 6 for c in classes}}


def test_class_in_train_but_not_in_test_is_named(tmp_path):
    train = uneven_tree(tmp_path / "tr", {"apple": 4, "kiwi": 4})
    test = uneven_tree(tmp_path / "te", {"apple": 4})
    with pytest.raises(FeatdynError, match=r"not in the test tree .*te.*kiwi"):
        build_manifest(train, SplitSpec(probe_per_class=1), test)
    with pytest.raises(FeatdynError, match=r"not in the training tree .*tr.*kiwi"):
        build_manifest(test, SplitSpec(probe_per_class=1), train)


def test_empty_class_folder_and_missing_root_are_named(tmp_path):
    root = make_tree(tmp_path / "t", classes=2, per_class=2, size=8)
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("not an image")
    for check in (scan_tree, check_tree):
        with pytest.raises(FeatdynError, match=r"class folder .*empty holds no images"):
            check(root, "datasets.d.path")
        with pytest.raises(FeatdynError, match=r"datasets.d.path: folder .*nowhere does not exist"):
            check(tmp_path / "nowhere", "datasets.d.path")
    (root / "empty").rename(root / ".hidden")  # hidden folders are not classes
    assert check_tree(root) == ["class_0", "class_1"] == list(scan_tree(root))


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_stops_prepare_with_its_name_and_leaves_nothing(tmp_path, damage):
    root = make_tree(tmp_path / "t", classes=2, per_class=6, size=32, fmt="jpg")
    bad = root / "class_1" / "img_004.jpg"
    data = bad.read_bytes()
    bad.write_bytes(b"\x00not an image" * 10 if damage == "garbage" else data[: len(data) // 2])
    out = tmp_path / "out"
    with pytest.raises(FeatdynError, match=r"cannot read image .*class_1/img_004.jpg"):
        prepare(root, out, 16, SplitSpec(probe_per_class=1), threads=2)
    assert not out.exists() or not any(p for p in out.iterdir()), "nothing half-written may remain"


def test_prepare_writes_manifest_cache_and_summary(tmp_path):
    root = make_tree(tmp_path / "t", classes=3, per_class=6, size=20)
    summary = prepare(root, tmp_path / "out", 12, SplitSpec(test_fraction=0.5, probe_per_class=2), threads=2,
                      name="colours")
    cache = ImageCache(tmp_path / "out")
    assert cache.images.shape == (18, 12, 12, 3) and cache.images.dtype == np.uint8
    assert cache.num_classes == 3 and cache.classes == ["class_0", "class_1", "class_2"]
    for i in (0, 7, 17):  # every cache row is its manifest row's image, decoded and resized once
        np.testing.assert_array_equal(cache.images[i], load_image(cache.manifest.loc[i, "path"], 12))
    assert set(cache.indices("probe")) <= set(cache.indices("test"))
    assert len(cache.indices("train")) + len(cache.indices("test")) == 18
    assert json.loads((tmp_path / "out" / "dataset.json").read_text()) == summary
    assert summary["probe_sha256"] == cache.probe_sha256()
    again = prepare(root, tmp_path / "out2", 12, SplitSpec(test_fraction=0.5, probe_per_class=2), threads=1)
    assert again["probe_sha256"] == summary["probe_sha256"], "the probe set is reproducible"


def test_load_image_resizes_straight_without_crop(tmp_path):
    img = np.zeros((10, 40, 3), dtype=np.uint8)
    img[:, 20:] = 255                                    # right half white
    Image.fromarray(img).save(tmp_path / "wide.png")
    out = load_image(tmp_path / "wide.png", 8)
    assert out.shape == (8, 8, 3)
    assert out[:, :3].max() == 0 and out[:, 5:].min() == 255, "the whole width is kept (squeezed), not cropped"
    Image.fromarray(img[:, :, 0]).save(tmp_path / "grey.png")  # grey-level images become RGB
    assert load_image(tmp_path / "grey.png", 8).shape == (8, 8, 3)


def test_image_cache_shape_mismatch_is_named(tmp_path):
    root = make_tree(tmp_path / "t", classes=2, per_class=4, size=8)
    prepare(root, tmp_path / "out", 8, SplitSpec(probe_per_class=1))
    np.save(tmp_path / "out" / "cache.npy", np.zeros((3, 8, 8, 3), np.uint8))
    with pytest.raises(FeatdynError, match="cache.npy has shape"):
        ImageCache(tmp_path / "out")
    pd.DataFrame({"path": ["x"]}).to_csv(tmp_path / "out" / "manifest.csv", index=False)
    with pytest.raises(FeatdynError, match="manifest.csv lacks columns"):
        ImageCache(tmp_path / "out")


def test_ordered_map_keeps_order_bounds_work_and_stops_early():
    started = []

    def work(i):
        started.append(i)
        return i * i

    assert list(ordered_map(work, range(50), workers=3, ahead=4)) == [i * i for i in range(50)]
    started.clear()
    gen = ordered_map(work, range(1000), workers=2, ahead=3)
    assert [next(gen) for _ in range(5)] == [0, 1, 4, 9, 16]
    gen.close()
    assert len(started) <= 5 + 3, "at most `ahead` items are computed ahead, and closing stops the rest"

    def fail(i):
        if i == 3:
            raise FeatdynError("item 3 is bad")
        return i

    with pytest.raises(FeatdynError, match="item 3"):
        list(ordered_map(fail, range(100), workers=2))
