"""Faults and bad input (issue 11), on the library: no silent wrong numbers, every error names its
file. One test (or more) per finding; each fails on the code before the fix. The workflow-level
cases (a deleted chunk, a swapped store, a NaN checkpoint...) are in test_faults_workflow.py."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_stores import ATTRS, LAYERS, activations, write_store

from featdyn import FeatdynError
from featdyn.atomic import stale_temporaries, write_text
from featdyn.data.datasets import ImageCache, SplitSpec, load_image, prepare
from featdyn.data.stores import ActivationStore, StoreWriter, array_name, expected_attrs, open_pair, open_store
from featdyn.engine.filterwise import FilterAccumulator, filter_scores, map_distances
from featdyn.engine.metrics import distance
from featdyn.engine.stats import load_pairs, load_sides, pair_stats, save_pairs, save_sides
from featdyn.nets.checkpoints import save_checkpoint
from featdyn.nets.training import run_epoch
from featdyn.spec.config import check
from featdyn.spec.hyperparams import TrainConfig
from featdyn.spec.schema import check_keys

from conftest import REPO, make_tree
from metric_reference import make_pair

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
CPU = torch.device("cpu")
LAYER_CASES = [("procrustes", {}), ("cka", {}), ("cca", {}), ("pwsm", {"alpha": 0.5})]
LAYER_IDS = ["procrustes", "cka", "cca", "pwsm0.5"]


def chunk_file(store: Path, layer: str, key: str = "1/0/0/0") -> Path:
    return store / array_name(layer) / "c" / key


# -- 1. chunks: a missing one is never read as zeros, a garbled one never as numbers ---------------

def test_a_deleted_chunk_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "epoch_1.zarr"
    write_store(path, attrs={"epoch": 1})
    gone = chunk_file(path, "features.1")
    gone.unlink()
    with pytest.raises(FeatdynError, match=rf"chunk file {gone}.* of layer 'features.1' is missing"):
        ActivationStore(path)
    (path / "labels" / "c" / "0").unlink()
    with pytest.raises(FeatdynError, match="missing"):
        open_store(path)


@pytest.mark.parametrize("codec", ["zstd", "none"])
def test_a_garbled_chunk_is_refused_naming_the_file_with_both_codecs(tmp_path, codec):
    path = tmp_path / "epoch_1.zarr"
    data = write_store(path, codec=codec, attrs={"epoch": 1})
    bad = chunk_file(path, "layer1.2.relu@3")
    raw = bytearray(bad.read_bytes())
    raw[len(raw) // 3] ^= 0x5A  # one flipped byte, length unchanged: uncompressed, it decodes "fine"
    bad.write_bytes(bytes(raw))
    store = open_store(path)
    np.testing.assert_array_equal(next(store.batches("features.1"))[1], data["features.1"][:4])
    with pytest.raises(FeatdynError, match=rf"layer 'layer1.2.relu@3', epoch 1, probe rows 4-7: chunk {bad} "
                                           r"is corrupt .*checksum"):
        list(store.batches("layer1.2.relu@3"))


@pytest.mark.parametrize("old", [1, 2])
def test_a_store_of_the_old_format_is_refused_with_the_command(tmp_path, old):
    """Format 1 had no checksums; format 2 stored channels-last maps as if channels-first."""
    path = tmp_path / "s.zarr"
    write_store(path)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["format"] = old
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(FeatdynError, match=rf"store format {old}, this featdyn reads format 3 .*--forcerun extract"):
        open_store(path)


# -- 2. a store is refused unless it is the one the job expects --------------------------------------

def test_a_store_of_another_epoch_checkpoint_or_layer_list_is_refused(tmp_path):
    ckpt1, ckpt2 = tmp_path / "epoch_1.pt", tmp_path / "epoch_2.pt"
    ckpt1.write_bytes(b"one")
    ckpt2.write_bytes(b"two")
    src = tmp_path / "epoch_0.zarr"
    write_store(src)
    swapped = tmp_path / "epoch_1.zarr"  # epoch 2's store where epoch 1's should be
    write_store(swapped, seed=2, attrs={"epoch": 2, **expected_attrs(checkpoint=ckpt2)})
    common = {"model": "m", "layers": LAYERS}
    want = expected_attrs(checkpoint=ckpt1, epoch=1)
    with pytest.raises(FeatdynError, match=r"epoch_1.zarr: attribute 'epoch' is 2, expected 1"):
        open_pair(src, swapped, common, target=want)
    meta = json.loads((swapped / "zarr.json").read_text())
    meta["attributes"]["epoch"] = 1  # its epoch edited: the checkpoint hash still tells
    (swapped / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(FeatdynError, match=r"attribute 'checkpoint_sha256' is '.*', expected '.*'"):
        open_pair(src, swapped, common, target=want)
    with pytest.raises(FeatdynError, match=r"attribute 'layers' is \['features.1', 'layer1.2.relu@3'\], "
                                           r"expected \['features.1'\]"):
        open_pair(src, swapped, {"layers": ["features.1"]})


# -- 3. NaN, inf and overflow -----------------------------------------------------------------------

def test_extraction_refuses_nonfinite_activations_naming_the_layer(tmp_path):
    batch = activations(4)
    batch["layer1.2.relu@3"][2, 1, 0, 0] = np.nan
    out = tmp_path / "s.zarr"
    with pytest.raises(FeatdynError, match=r"layer 'layer1.2.relu@3' \(probe rows 0-3.*non-finite activations"):
        with StoreWriter(out, 4, LAYERS, ATTRS, chunk=4) as w:
            w.write(0, batch, np.zeros(4), np.arange(4))
    assert not out.exists()


@pytest.mark.parametrize(("name", "params"), LAYER_CASES, ids=LAYER_IDS)
def test_layer_metrics_refuse_nan_inf_and_overflow_and_survive_1e150(name, params):
    x, y = make_pair("random", 50, 5, 0.7, np.random.default_rng(0))
    base = distance(name, x, y, device="cpu", **params)
    # 1e150: float64 holds the statistics, but products of traces overflowed (every metric its maximum)
    assert distance(name, x * 1e150, y * 1e150, device="cpu", **params) == pytest.approx(base, abs=1e-12)
    assert distance(name, x * 1e150, y, device="cpu", **params) == pytest.approx(base, abs=1e-12)
    with pytest.raises(FeatdynError, match="overflowed"):
        distance(name, x * 1e160, y, device="cpu", **params)
    for bad in (np.nan, np.inf, -np.inf):
        xb = x.copy()
        xb[7, 2] = bad
        with pytest.raises(FeatdynError, match=r"activations \(X\): 1 of 250 values are NaN or inf .*index \(7, 2\)"):
            distance(name, xb, y, device="cpu", **params)
        with pytest.raises(FeatdynError, match=r"activations \(Y\)"):
            distance(name, y, xb, device="cpu", **params)


@pytest.mark.parametrize("kind", ["procrustes", "cka"])
def test_filter_metrics_refuse_nan_inf_and_overflow_and_survive_1e150(kind):
    rng = np.random.default_rng(1)
    x = rng.random((6, 3, 5, 5))
    y = x + 0.3 * rng.random((6, 3, 5, 5))
    labels = np.array([0, 0, 0, 1, 1, 1])
    base = filter_scores(kind, x, y, labels, device="cpu")
    big = filter_scores(kind, x * 1e150, y * 1e150, labels, device="cpu")
    np.testing.assert_allclose(big.sums, base.sums, atol=1e-12)
    assert (big.counts == 6 // 2).all()
    with pytest.raises(FeatdynError, match="overflow float64 map norms"):
        map_distances(kind, x * 1e160, y, device="cpu")
    for bad in (np.nan, np.inf):
        xb = x.copy()
        xb[4, 1, 2, 2] = bad  # one pixel of one map: before, a NaN CKA map counted as valid
        acc = FilterAccumulator(kind, device="cpu")
        with pytest.raises(FeatdynError, match=r"maps of the source \(A\): 1 of 450 values are NaN or inf"):
            acc.update(xb, y, labels)
        with pytest.raises(FeatdynError, match=r"maps of the target \(B\)"):
            filter_scores(kind, y, xb, labels, device="cpu")


def test_nan_in_a_store_stops_the_statistics_naming_store_layer_and_epoch(tmp_path, monkeypatch):
    """A store with a NaN (as a featdyn without the writer's check made them): the statistics of
    both granularities stop, naming the store, the layer and the epoch."""
    import featdyn.data.stores as stores
    from featdyn.engine.similarity import filter_scores_from_stores, pair_stats_from_stores, source_stats_from_store

    good = tmp_path / "epoch_0.zarr"
    write_store(good)
    monkeypatch.setattr(stores, "check_activations", lambda *args, **kwargs: None)
    data = activations(10, seed=1)
    data["layer1.2.relu@3"][6, 2, 1, 0] = np.nan
    bad = {}
    for epoch in (0, 1):
        bad[epoch] = tmp_path / f"nan_{epoch}.zarr"
        with StoreWriter(bad[epoch], 10, LAYERS, {**ATTRS, "epoch": epoch}, chunk=4) as w:
            for start in range(0, 10, 4):
                stop = min(start + 4, 10)
                w.write(start, {k: v[start:stop] for k, v in data.items()}, np.arange(start, stop) % 3,
                        np.arange(start, stop) + 100)
    layer = r"layer 'layer1.2.relu@3'"
    with pytest.raises(FeatdynError, match=rf"activation store {bad[0]}, {layer}, epoch 0: activations \(X\): "
                                           r"1 of 96 values are NaN or inf \(first: nan at index \(2, 2, 1, 0\)\)"):
        source_stats_from_store(bad[0], device="cpu")
    with pytest.raises(FeatdynError, match=rf"activation stores {good} and {bad[1]}, {layer}, epoch 1: "
                                           r"activations \(Y\)"):
        pair_stats_from_stores(good, bad[1], source_stats_from_store(good, device="cpu"), device="cpu")
    with pytest.raises(FeatdynError, match=rf"activation stores {good} and {bad[1]}, {layer}, epoch 1: "
                                           r"maps of the target \(B\): 1 of"):
        filter_scores_from_stores(good, bad[1], {"kind": "cka", "granularity": "filter"}, model="m", dataset="d",
                                 metric="cka_f", device="cpu")


def test_statistics_files_with_nan_are_refused_naming_file_and_array(tmp_path):
    x, y = make_pair("random", 40, 4, 0.5, np.random.default_rng(2))
    stats = pair_stats(x, y)
    save_sides(tmp_path / "source.npz", {"l": stats.x})
    stats.xy[1, 1] = float("nan")  # e.g. written by an older featdyn from NaN activations
    save_pairs(tmp_path / "epoch_1.npz", {"l": stats})
    with pytest.raises(FeatdynError, match=r"epoch_1.npz, array '0/xy': 1 of 16 values are NaN"):
        load_pairs(tmp_path / "epoch_1.npz", load_sides(tmp_path / "source.npz"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> ImageCache:
    tmp = tmp_path_factory.mktemp("data")
    make_tree(tmp / "tree", classes=2, per_class=8, size=16)
    prepare(tmp / "tree", tmp / "prepared", 32, SplitSpec(test_fraction=0.25, probe_per_class=2), threads=1)
    return ImageCache(tmp / "prepared")


@pytest.fixture(scope="module")
def epoch0(tmp_path_factory, cache) -> Path:
    from featdyn.nets.models import fetch_weights

    tmp = tmp_path_factory.mktemp("ckpt")
    fetch_weights("mobilenet_v2", None, tmp / "w.pt", seed=0, width=0.25)
    run_epoch(0, "mobilenet_v2", cache, TrainConfig(batch_size=4, eval_batch_size=8), tmp / "epoch_0.pt",
              weights_file=tmp / "w.pt", device=CPU, width=0.25)
    return tmp / "epoch_0.pt"


def test_training_stops_at_the_first_nonfinite_loss_naming_epoch_and_batch(tmp_path, cache, epoch0):
    cfg = TrainConfig(batch_size=4, eval_batch_size=8, lr=1e35, optimizer="sgd", grad_clip=None)
    out = tmp_path / "epoch_1.pt"
    with pytest.raises(FeatdynError, match=r"epoch 1: the training loss is not finite at batch [234] of 3 "
                                           r"\(loss (nan|inf)\); nothing was saved"):
        run_epoch(1, "mobilenet_v2", cache, cfg, out, previous=epoch0, device=CPU, width=0.25)
    assert not out.exists() and not stale_temporaries(out)


def test_a_checkpoint_with_a_nan_weight_is_refused_naming_the_weight(tmp_path, cache, epoch0):
    ckpt = torch.load(epoch0, weights_only=True)
    name = "features.3.conv.1.0.weight"
    ckpt["model"][name].view(-1)[5] = float("nan")
    bad = tmp_path / "epoch_0.pt"
    torch.save(ckpt, bad)
    with pytest.raises(FeatdynError, match=rf"checkpoint {bad} \(epoch 0\): weight '{name}' is not finite"):
        run_epoch(1, "mobilenet_v2", cache, TrainConfig(batch_size=4), tmp_path / "epoch_1.pt", previous=bad,
                  device=CPU, width=0.25)


# -- 4. misspelt config keys, at every level --------------------------------------------------------

BASE = {"models": {"m": {"arch": "mobilenet_v2", "weights": None}}, "datasets": {"d": {"demo": "digits"}},
        "metrics": {"p": {"kind": "pwsm", "alpha": 0.5}}}


@pytest.mark.parametrize("where, key, wanted", [
    ([], "trainig", "training"),                       # a top-level block
    ([], "probes", "probe"),
    (["training"], "eppochs", "training.epochs"),      # inside a block
    (["extraction"], "codek", "extraction.codec"),
    (["models", "m", "training"], "epoch", "models.m.training.epochs"),  # three levels down
    (["datasets", "d", "training"], "momentom", "datasets.d.training.momentum"),
    (["metrics", "p"], "alfa", "metrics.p.alpha"),     # a metric block
    (["threads"], "layer_stat", "threads.layer_stats"),  # a rule name
])
def test_a_misspelt_key_is_refused_with_the_closest_valid_key(where, key, wanted):
    cfg = copy.deepcopy(BASE)
    node = cfg
    for k in where:
        node = node.setdefault(k, {})
    node[key] = 1
    full = ".".join([*where, key])
    with pytest.raises(FeatdynError, match=rf"unknown key '{full}' \(did you mean '{wanted}'\?\)"):
        check_keys(cfg, SCHEMA)
    check_keys(BASE, SCHEMA)


def test_a_thread_count_below_one_is_refused_naming_the_rule():
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate
    cfg = {**copy.deepcopy(BASE), "threads": {"score": 0}}
    with pytest.raises(WorkflowError, match=r"(?s)minimum of 1.*\['threads'\]\['score'\]"):
        validate(cfg, str(SCHEMA))
    ok = {**copy.deepcopy(BASE), "threads": {"score": 3}}
    validate(ok, str(SCHEMA))
    assert ok["threads"] == {"score": 3, "prepare_dataset": 8, "finetune_epoch": 4, "extract": 4,
                             "source_stats": 2, "layer_stats": 2, "filter_scores": 2}  # the rules' defaults


def test_an_unknown_key_without_a_close_match_lists_the_valid_ones():
    with pytest.raises(FeatdynError, match=r"unknown key 'colour' \(valid keys at the top: seed, image_size"):
        check_keys({**BASE, "colour": "blue"}, SCHEMA)


# -- 5. image modes ---------------------------------------------------------------------------------

def test_a_16bit_png_is_scaled_not_clipped_white(tmp_path):
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    img = load_image(tmp_path / "grey16.png", 32)
    assert img.shape == (32, 32, 3) and (img[..., 0] == img[..., 2]).all()
    expected = np.round(ramp / 257.0)
    assert np.abs(img[..., 0].astype(float) - expected).max() <= 1, "16-bit grey must scale to 0..255"
    Image.fromarray(ramp.astype(np.float32) / 65535).save(tmp_path / "float.tif")
    with pytest.raises(FeatdynError, match=r"image .*float.tif has Pillow mode 'F'"):
        load_image(tmp_path / "float.tif", 32)


# -- 6. one class -----------------------------------------------------------------------------------

def test_a_dataset_with_one_class_is_refused(tmp_path):
    root = make_tree(tmp_path / "one", classes=1, per_class=10, size=8)
    with pytest.raises(FeatdynError, match=r"datasets.d.path: folder .*one has 1 class folder \(class_0\); .*at "
                                           r"least two classes"):
        check({**BASE, "datasets": {"d": {"path": str(root)}}})
    with pytest.raises(FeatdynError, match="at least two classes"):
        prepare(root, tmp_path / "out", 16, SplitSpec(probe_per_class=1), name="one")
    assert not (tmp_path / "out" / "manifest.csv").exists()


# -- 7. every I/O error names its file --------------------------------------------------------------

def test_a_truncated_statistics_file_is_named(tmp_path):
    x, y = make_pair("random", 40, 4, 0.5, np.random.default_rng(3))
    path = tmp_path / "source.npz"
    save_sides(path, {"l": pair_stats(x, y).x})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(FeatdynError, match=rf"cannot read statistics file {path}: BadZipFile"):
        load_sides(path)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (root only): a real 'No space left on device'."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    # lazily: a writer that failed may still hold a file open until it is collected
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_a_full_disk_during_a_checkpoint_save_is_named(small_disk):
    model = torch.nn.Linear(1000, 1000)  # 4 MB of weights: does not fit in 2 MB
    out = small_disk / "epoch_1.pt"
    with pytest.raises(FeatdynError, match=rf"cannot write {out}: No space left on device \[errno 28\]; "
                                           r"0.0 MB free"):
        save_checkpoint(out, model, None, {"epoch": 1})
    assert list(small_disk.iterdir()) == [], "neither the checkpoint nor its temporary is left"
    store = small_disk / "epoch_1.zarr"  # a store, and any file written through featdyn.atomic
    with pytest.raises(FeatdynError, match=rf"cannot write {store}: No space left on device"):
        write_store(store, n=4000, codec="none")
    with pytest.raises(FeatdynError, match=rf"cannot write {small_disk / 'table.csv'}: No space left on device"):
        write_text(small_disk / "table.csv", "x" * (3 << 20))
    assert list(small_disk.iterdir()) == []


# -- 8. a killed checkpoint save --------------------------------------------------------------------

def test_the_temporary_of_a_killed_checkpoint_save_is_removed_by_the_next_save(tmp_path):
    out = tmp_path / "epoch_1.pt"
    killed = textwrap.dedent(f"""
        import os, signal, torch
        import featdyn.nets.checkpoints as checkpoints
        def save(obj, f):  # killed half-way through writing the checkpoint
            f.write(b"x" * 100000); f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        checkpoints.torch.save = save
        checkpoints.save_checkpoint({str(out)!r}, torch.nn.Linear(3, 3), None, {{"epoch": 1}})
    """)
    proc = subprocess.run([sys.executable, "-c", killed], env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == -signal.SIGKILL
    left = stale_temporaries(out)
    assert len(left) == 1 and left[0].stat().st_size == 100000 and not out.exists()
    save_checkpoint(out, torch.nn.Linear(3, 3), None, {"epoch": 1})
    assert out.exists() and not stale_temporaries(out), "the rerun removes what the killed save left"
