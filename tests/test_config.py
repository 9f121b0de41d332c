"""Semantic config checks: each bad input names its key and what was expected."""

import copy

import pytest

from featdyn import FeatdynError
from featdyn.spec.config import analysed_epochs, check, metric_params, with_defaults
from featdyn.spec.hyperparams import training_config

from conftest import make_tree

BASE = {
    "seed": 3,
    "models": {"m": {"arch": "mobilenet_v2", "weights": None, "training": {"lr": 0.5}}},
    "datasets": {"d": {"demo": "digits", "training": {"lr": 0.25, "epochs": 4}}, "e": {"demo": "textures"}},
    "training": {"epochs": 2, "batch_size": 7},
    "metrics": {"p": {"kind": "procrustes"}, "w": {"kind": "pwsm", "alpha": 0.5}},
}


def cfg(**changes):
    c = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = c
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return c


def test_valid_config_passes():
    check(cfg())


def test_training_blocks_merge_global_then_model_then_dataset():
    t = training_config(cfg(), "m", "d")
    assert (t["lr"], t["epochs"], t["batch_size"], t["seed"]) == (0.25, 4, 7, 3)
    assert training_config(cfg(), "m", "e")["lr"] == 0.5


def test_analysed_epochs():
    assert analysed_epochs(with_defaults(cfg()), "m", "e") == [0, 1, 2]
    assert analysed_epochs(with_defaults(cfg(analysis={"epochs": [2, 1]})), "m", "e") == [0, 1, 2]
    assert analysed_epochs(with_defaults(cfg(analysis={"epochs": [1, 3]})), "m", "d") == [0, 1, 3]


@pytest.mark.parametrize("changes, needle", [
    ({"models__m__arch": "resnet5"}, "models.m.arch"),
    ({"models__m__weights": "IMAGENET9K"}, "models.m.weights"),
    ({"models__m__weights": "weights/missing.pth"}, "weights/missing.pth"),
    # no rule decides the axes of MaxViT's partition attention (windows x tokens x channels)
    ({"models__m__arch": "maxvit_t", "models__m__layers": ["blocks.0.layers.0.layers.window_attention.attn_layer"]},
     "window_attention.attn_layer"),
    ({"models__m__layers": ["features.1", "features.99"]}, "models.m.layers"),
    ({"models__m__arch": "resnet18", "models__m__layers": ["layer1.0.relu"]}, "layer1.0.relu@2"),
    ({"datasets__d": {"path": "no/such/folder"}}, "no/such/folder"),
    ({"datasets__d": {"demo": "digits", "path": "x"}}, "datasets.d"),
    ({"datasets__d": {"url": "file:///x.tar"}}, "datasets.d.sha256"),
    ({"datasets__d": {"train": "x"}}, "datasets.d"),
    ({"metrics__p": {"kind": "procrustes", "alpha": 1.0}}, "metrics.p"),
    ({"analysis": {"epochs": [9]}}, "analysis.epochs"),
])
def test_bad_config_names_the_key(changes, needle):
    with pytest.raises(FeatdynError) as err:
        check(cfg(**changes))
    assert needle in str(err.value)


def test_empty_class_folder_is_named(tmp_path):
    root = make_tree(tmp_path / "t", classes=2, per_class=2, size=8)
    (root / "empty_class").mkdir()
    with pytest.raises(FeatdynError, match="empty_class"):
        check(cfg(datasets__d={"path": str(root)}))


def test_metric_params_fill_defaults():
    assert metric_params(cfg(), "p") == {"kind": "procrustes", "granularity": "layer"}
    assert metric_params(cfg(), "w") == {"kind": "pwsm", "granularity": "layer", "alpha": 0.5}


@pytest.mark.filterwarnings("ignore:The default weight initialization of inception_v3:FutureWarning")
def test_an_image_size_the_model_does_not_take_is_refused_once_by_the_check(tmp_path, monkeypatch):
    """A torchvision ViT takes exactly its 224 px; Inception's kernels outgrow a 64 px image. Both are
    found by the check's forward pass on the meta device, before any job runs, not by the model's
    own assertion in the first fine-tuning job; and each problem is said once."""
    monkeypatch.chdir(tmp_path)  # `layers: auto` writes results/layers_auto.json here
    for arch, width, needle in (("vit_b_16", 0.0625, "AssertionError: Wrong image height! Expected 224 but got 64"),
                                ("inception_v3", 1.0, "Kernel size can't be greater than actual input size")):
        with pytest.raises(FeatdynError) as err:
            check(cfg(models__m={"arch": arch, "weights": None, "width": width}, image_size=64))
        text = str(err.value)
        assert "models.m.layers:" in text and "does not run on image_size 64" in text and needle in text, text
        assert text.count("does not run on image_size") == 1, text
    check(cfg(models__m={"arch": "vit_b_16", "weights": None, "width": 0.0625}, image_size=224))
    # a width the architecture has no multiplier for: said once (the layers' check meets it again)
    with pytest.raises(FeatdynError) as err:
        check(cfg(models__m={"arch": "efficientnet_b0", "weights": None, "width": 0.5}, image_size=64))
    assert str(err.value).count("reduced widths exist") == 1, str(err.value)


def test_a_timm_model_without_weights_is_told_the_default_is_a_torchvision_name(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FeatdynError, match=r"models.m.weights: unknown timm pretrained tag 'IMAGENET1K_V1'.*"
                                           r"augreg_in21k_ft_in1k.*a torchvision weights name: a timm model needs "
                                           r"`weights` given"):
        check(cfg(models__m={"arch": "timm/vit_tiny_patch16_224"}, image_size=224))
    check(cfg(models__m={"arch": "timm/vit_tiny_patch16_224", "weights": "augreg_in21k_ft_in1k"}, image_size=224))
