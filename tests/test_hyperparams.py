"""What each epoch job depends on, and the workflow's per-parse config resolution without torch."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

from featdyn.spec.hyperparams import (
    EPOCH0_KEYS,
    OPTIMISATION_KEYS,
    RECIPE_KEYS,
    RUN_ONLY_KEYS,
    TrainConfig,
    epoch_params,
)

from conftest import REPO


def test_every_training_setting_is_placed_in_exactly_one_group():
    groups = [set(EPOCH0_KEYS), set(OPTIMISATION_KEYS), set(RECIPE_KEYS), set(RUN_ONLY_KEYS)]
    names = {f.name for f in fields(TrainConfig)}
    assert set().union(*groups) == names and sum(map(len, groups)) == len(names)


def test_epoch_params():
    block = TrainConfig().__dict__ | {"lr": 1e-3}
    zero, one = epoch_params(block, 0), epoch_params(block, 1)
    assert "lr" not in zero and "epochs" not in zero and zero["seed"] == 0 and zero["mean"] == [0.485, 0.456, 0.406]
    assert one["lr"] == 1e-3 and "eval_batch_size" not in one and "momentum" not in one  # Adam has none
    assert epoch_params(block | {"optimizer": "sgd"}, 3)["momentum"] == 0.9
    assert epoch_params(block | {"epochs": 50, "eval_batch_size": 1}, 2) == epoch_params(block, 2)


def test_recipe_options_enter_only_the_epochs_they_change():
    plain = TrainConfig().__dict__
    keys = set(epoch_params(plain, 1))
    assert not keys & set(RECIPE_KEYS) and "probe" not in keys, "a block without recipes: the params of before"
    assert epoch_params(plain | {"freeze_bn": False}, 1) == epoch_params(plain, 1), "freeze_bn alone changes nothing"
    for option in ({"freeze": ["features.0"]}, {"probe_epochs": 1}, {"layer_lr": {"decay": 0.8}},
                   {"lr_from": {"model": "m", "metric": "p"}}):
        block = plain | option
        assert epoch_params(block, 0) == epoch_params(plain, 0), f"{option}: epoch 0 (the source model) is shared"
        assert epoch_params(block, 2) != epoch_params(plain, 2), option
    frozen = plain | {"freeze": "backbone"}
    assert epoch_params(frozen | {"freeze_bn": False}, 1) != epoch_params(frozen, 1)
    lpft = plain | {"probe_epochs": 2, "layer_lr": {"decay": 0.8}}
    assert epoch_params(lpft, 1) == epoch_params(lpft | {"probe_epochs": 3, "layer_lr": None}, 1) == \
        {**epoch_params(plain, 1), "probe": True, "freeze_bn": True}
    assert epoch_params(lpft, 3)["layer_lr"] == {"decay": 0.8} and epoch_params(lpft, 3)["probe_epochs"] == 2


def test_the_workflow_resolves_its_config_without_torch():
    """What every parse runs (also each cluster job's, before its own work) imports no torch."""
    code = f"""
import sys
sys.path.insert(0, {str(REPO / 'src')!r})
from featdyn.spec import config as c, fingerprints
from featdyn.spec.hyperparams import epoch_params, training_config
cfg = {{"models": {{"m": {{"arch": "resnet50", "layers": "preset"}}}}, "datasets": {{"d": {{"path": "x"}}}},
       "metrics": {{"p": {{"kind": "pwsm"}}, "f": {{"kind": "cka", "granularity": "filter"}}}}}}
cfg = c.with_defaults(cfg)
assert c.metric_params(cfg, "p")["alpha"] == 0.0 and c.layers_of(cfg, "m")[0] == "relu"
epoch_params(training_config(cfg, "m", "d"), 1)
c.dataset_roots("d", cfg["datasets"]["d"], "results/data/d")
fingerprints.code_digest({str(REPO / 'workflow/scripts/score.py')!r}, {str(REPO / 'src/featdyn')!r})
c.visualize_block(cfg), c.visual_epochs(cfg, "m", "d"), c.rank_metric(cfg)
heavy = sorted(m for m in ("torch", "torchvision", "pandas", "numpy", "zarr", "PIL") if m in sys.modules)
assert not heavy, heavy
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_metric_kinds_agree_with_the_metrics():
    from featdyn.engine import filterwise, metrics
    from featdyn.spec.metric_kinds import FILTER_KINDS, KIND_PARAMS

    assert {k: m.params for k, m in metrics.METRICS.items()} == KIND_PARAMS
    assert set(FILTER_KINDS) == set(filterwise.MAP_DISTANCES)
