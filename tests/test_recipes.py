"""Fine-tuning recipes on tiny real runs: frozen parts stay bit-identical (BatchNorm included), LP-FT
trains the head alone then everything, layer-wise multipliers reach the optimizer, lr_from maps the
reference distances as configured, and a chain of epoch jobs still equals one uninterrupted loop."""

from __future__ import annotations

import csv

import pytest
import torch

from featdyn import FeatdynError
from featdyn.data.datasets import ImageCache, SplitSpec, prepare
from featdyn.nets import recipes
from featdyn.nets.checkpoints import load_checkpoint, resume_path
from featdyn.nets.models import construct, fetch_weights, replace_head
from featdyn.nets.training import fine_tune, run_epoch
from featdyn.spec.hyperparams import TrainConfig, epoch_params, fresh_optimizer

from conftest import make_tree

CPU = torch.device("cpu")
ARCH, WIDTH = "mobilenet_v2", 0.25  # BatchNorm everywhere: what freeze_bn is about
CFG = dict(epochs=2, batch_size=6, eval_batch_size=6, lr=1e-3)
FROZEN = ["features.0", "features.1", "features.2"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> ImageCache:
    tmp = tmp_path_factory.mktemp("data")
    make_tree(tmp / "tree", classes=3, per_class=8, size=20)
    prepare(tmp / "tree", tmp / "prepared", 32, SplitSpec(test_fraction=0.25, probe_per_class=2), threads=2)
    return ImageCache(tmp / "prepared")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "mnet.pt"
    fetch_weights(ARCH, None, path, seed=0, width=WIDTH)
    return path


def chain(tmp, cache, cfg, weights, upto, distances=None, drop_states=()):
    """Epoch jobs 0..upto from checkpoint files, as the workflow runs them; the resume states of
    the epochs in ``drop_states`` are deleted first (no job may need them)."""
    states, previous = [], None
    for epoch in range(upto + 1):
        out = tmp / f"epoch_{epoch}.pt"
        if previous is not None and epoch - 1 in drop_states:
            resume_path(previous).unlink()
        run_epoch(epoch, ARCH, cache, cfg, out, weights_file=weights, previous=previous, device=CPU, width=WIDTH,
                  distances=distances)
        states.append(load_checkpoint(out)["model"])
        previous = out
    return states


def same(a, b, names):
    return all(torch.equal(a[k], b[k]) for k in names)


def under_any(name, prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def assert_loop_equals_chain(cache, cfg, weights, last_state, distances=None):
    model, _ = fine_tune(ARCH, cache, cfg, weights, device=CPU, width=WIDTH, distances=distances)
    for k, v in model.state_dict().items():
        assert torch.equal(last_state[k], v), f"{k} differs between the chained and the uninterrupted run"


def test_frozen_modules_and_their_batchnorm_stay_bit_identical(tmp_path, cache, weights):
    cfg = TrainConfig(**CFG, freeze=FROZEN)
    states = chain(tmp_path, cache, cfg, weights, upto=2)
    frozen = [k for k in states[0] if under_any(k, FROZEN)]
    assert any("running_mean" in k for k in frozen) and any(k.endswith(".weight") for k in frozen)
    for e in (1, 2):
        assert same(states[0], states[e], frozen), f"epoch {e}: a frozen weight or BatchNorm statistic moved"
        moved = [k for k in states[0] if k not in frozen and not torch.equal(states[0][k], states[e][k])]
        assert any(k.startswith("features.3") for k in moved) and any(k.startswith("classifier") for k in moved)
    meta = load_checkpoint(tmp_path / "epoch_2.pt")["recipe"]
    assert meta["frozen"] == FROZEN and meta["lr_scale"]["features.0"] == 0.0 and meta["lr_scale"]["features.3"] == 1.0
    state = torch.load(resume_path(tmp_path / "epoch_2.pt"), weights_only=True)["optimizer"]
    names = [n for g in state["param_groups"] for n in g["names"]]
    assert not any(under_any(n, FROZEN) for n in names), "frozen parameters have no optimizer state"
    assert_loop_equals_chain(cache, cfg, weights, states[-1])

    # freeze_bn: false lets the frozen modules' BatchNorm statistics follow the new data
    loose = TrainConfig(**CFG | {"epochs": 1}, freeze=FROZEN, freeze_bn=False)
    (tmp_path / "loose").mkdir()
    states = chain(tmp_path / "loose", cache, loose, weights, upto=1)
    weights_only = [k for k in frozen if "running" not in k and "num_batches" not in k]
    assert same(states[0], states[1], weights_only)
    assert not torch.equal(states[0]["features.0.1.running_mean"], states[1]["features.0.1.running_mean"])


def test_lp_ft_trains_the_head_alone_then_every_layer(tmp_path, cache, weights):
    cfg = TrainConfig(**CFG | {"epochs": 3}, probe_epochs=1)
    # epoch 2 starts a fresh optimizer: the probe's resume state is read by no job
    assert [fresh_optimizer(vars(cfg), e) for e in (1, 2, 3)] == [True, True, False]
    states = chain(tmp_path, cache, cfg, weights, upto=3, drop_states=(1,))
    backbone = [k for k in states[0] if not k.startswith("classifier.1")]
    assert same(states[0], states[1], backbone), "the backbone (weights and BatchNorm) is the source's in the probe"
    assert not torch.equal(states[0]["classifier.1.weight"], states[1]["classifier.1.weight"])
    for e in (2, 3):
        assert not torch.equal(states[e - 1]["features.0.0.weight"], states[e]["features.0.0.weight"])
    assert load_checkpoint(tmp_path / "epoch_1.pt")["recipe"]["probe"] is True
    assert load_checkpoint(tmp_path / "epoch_2.pt")["recipe"]["probe"] is False
    assert_loop_equals_chain(cache, cfg, weights, states[-1])
    # The probe epochs do not depend on m, the later ones do: raising m keeps epoch 1
    one, two = vars(cfg), vars(cfg) | {"probe_epochs": 2}
    assert epoch_params(one, 1) == epoch_params(two, 1) and epoch_params(one, 2) != epoch_params(two, 2)


@pytest.mark.parametrize("layer_lr", [{"features.0": 0.1, "features.1.conv": 0.5, "classifier": 10.0},
                                      {"decay": 0.5}])
def test_layer_multipliers_reach_the_optimizer(tmp_path, cache, weights, layer_lr):
    cfg = TrainConfig(**CFG | {"epochs": 1}, layer_lr=layer_lr)
    chain(tmp_path, cache, cfg, weights, upto=1)
    groups = torch.load(resume_path(tmp_path / "epoch_1.pt"), weights_only=True)["optimizer"]["param_groups"]
    got = {n: g["lr"] for g in groups for n in g["names"]}
    model = construct(ARCH, WIDTH)
    replace_head(model, cache.num_classes)
    assert sorted(got) == sorted(n for n, _ in model.named_parameters()), "every parameter, in one group each"
    if "decay" in layer_lr:
        order = [params for _, params in recipes.blocks(model)][::-1]  # from the head down
        assert len(order) == 20
        for depth, params in enumerate(order):
            for n in params:
                assert got[n] == pytest.approx(1e-3 * 0.5 ** depth, rel=1e-12), n
    else:
        assert got["features.0.0.weight"] == pytest.approx(1e-4)
        assert got["features.1.conv.0.0.weight"] == pytest.approx(5e-4)
        assert got["features.1.conv.0.1.bias"] == pytest.approx(5e-4)
        assert got["classifier.1.weight"] == pytest.approx(1e-2)
        assert got["features.2.conv.0.0.weight"] == pytest.approx(1e-3)
    assert {g["lr"] for g in groups} == {1e-3 * g["lr_scale"] for g in groups}


def test_full_fine_tuning_keeps_one_group_and_no_recipe_metadata(tmp_path, cache, weights):
    cfg = TrainConfig(**CFG | {"epochs": 1})
    chain(tmp_path, cache, cfg, weights, upto=1)
    groups = torch.load(resume_path(tmp_path / "epoch_1.pt"), weights_only=True)["optimizer"]["param_groups"]
    assert len(groups) == 1 and "names" not in groups[0]
    assert "recipe" not in load_checkpoint(tmp_path / "epoch_1.pt")


def test_lr_from_maps_the_distances_onto_the_blocks(tmp_path):
    model = construct(ARCH, WIDTH, meta=True)
    distances = {"features.1": 0.1, "features.3": 0.4, "features.13": 0.2}
    scales = recipes.lr_from_scales(model, distances, {"power": 1.0, "floor": 0.3})
    # blocks 0..1 take features.1's (0.1 / 0.4 = 0.25, floored to 0.3), 2..3 features.3's (1),
    # 4..13 and the blocks after the deepest layer features.13's (0.5), the head the base lr
    assert scales["features.0.0.weight"] == 0.3 and scales["features.1.conv.0.0.weight"] == 0.3
    assert scales["features.2.conv.0.0.weight"] == 1.0 and scales["features.3.conv.0.0.weight"] == 1.0
    assert scales["features.4.conv.0.0.weight"] == 0.5 and scales["features.18.0.weight"] == 0.5
    assert scales["classifier.1.weight"] == 1.0
    assert recipes.distance_scales([0.1, 0.4], 2.0, 0.01) == [0.0625, 1.0]
    with pytest.raises(FeatdynError, match="no positive maximum"):
        recipes.distance_scales([0.0, -1e-12], 1.0, 0.01)
    with pytest.raises(FeatdynError, match="layer 'nope' of the reference run is no module"):
        recipes.lr_from_scales(model, {"nope": 0.1}, {"power": 1.0, "floor": 0.01})

    score = tmp_path / "score.csv"
    with open(score, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "layer", "layer_index", "epoch", "value"])
        for epoch in (0, 1, 2):
            for i, layer in enumerate(["features.3", "features.1"][::-1]):
                w.writerow(["procrustes", layer, i, epoch, 0.1 * epoch * (i + 1)])
    assert recipes.reference_distances(score, "procrustes", "last") == {"features.1": 0.2, "features.3": 0.4}
    assert recipes.reference_distances(score, "procrustes", 1) == pytest.approx({"features.1": 0.1, "features.3": 0.2})
    with pytest.raises(FeatdynError, match="epoch 5 is not in"):
        recipes.reference_distances(score, "procrustes", 5)
    with pytest.raises(FeatdynError, match="expected 'cka'"):
        recipes.reference_distances(score, "cka", 1)


def test_lr_from_chain_equals_loop_and_records_its_rates(tmp_path, cache, weights):
    distances = {"features.1": 0.05, "features.3": 0.2}
    cfg = TrainConfig(**CFG, lr_from={"model": "full", "metric": "procrustes", "epoch": "last", "power": 1.0,
                                      "floor": 0.01})
    states = chain(tmp_path, cache, cfg, weights, upto=2, distances=distances)
    meta = load_checkpoint(tmp_path / "epoch_2.pt")["recipe"]
    assert meta["lr_from"]["distances"] == distances
    assert meta["lr_scale"]["features.0"] == 0.25 and meta["lr_scale"]["features.2"] == 1.0
    assert meta["lr_scale"]["classifier.1"] == 1.0
    assert_loop_equals_chain(cache, cfg, weights, states[-1], distances)
