"""Layouts of layers, `layers: auto` and unit fields for every torchvision classifier (meta device)."""

from __future__ import annotations

import pytest
import torch

from featdyn import FeatdynError
from featdyn.nets.auto_layers import auto_layers
from featdyn.nets.layouts import model_layouts
from featdyn.nets.models import classification_models, construct
from featdyn.nets.receptive_field import _field, trace
from featdyn.nets.unit_fields import unit_fields

# The smallest input each family takes (a torchvision ViT exactly its own; MaxViT a multiple of its
# partitions at every stage; Inception-v3 at least 75 px).
SIZES = {"vit": 224, "maxvit": 224, "inception": 96, "swin_v2": 64}
# Where the analytic reader meets operations it cannot reason about, the figures measure the field
# (featdyn.nets.unit_fields): Swin's shifted-window attention, ShuffleNet's channel shuffle, MaxViT's
# partitions. Measured here on one small model of each of the first two (below).
MEASURED = ("swin_", "shufflenet_", "maxvit_")


def size_of(arch: str) -> int:
    return next((s for prefix, s in SIZES.items() if arch.startswith(prefix)), 64)


@pytest.mark.parametrize("arch", classification_models())
def test_every_torchvision_classifier_resolves_layers_axes_and_fields(arch):
    size = size_of(arch)
    model = construct(arch, meta=True).eval()
    layers = auto_layers(model, size)
    assert len(layers) >= 3, layers
    layouts = model_layouts(model, layers, size)
    kinds = {rec["layout"] for rec in layouts.values()}
    if arch.startswith("vit_"):
        assert kinds == {"NTC"} and all(rec["prefix"] == 1 for rec in layouts.values())
        assert unit_fields(arch, 1.0, layers, size, layouts)[layers[0]].shape == tuple(layouts[layers[0]]["grid"])
        return
    assert kinds <= ({"NHWC", "NCHW"} if arch.startswith("swin_") else {"NCHW"}), kinds
    try:
        graph, outputs = trace(model)
        fields = {layer: _field(model, graph, outputs, layer, (size, size)) for layer in layers}
    except FeatdynError:
        assert arch.startswith(MEASURED), f"{arch}: the analytic reader fails on a family not known to need it"
        return
    for layer, rf in fields.items():
        assert list(rf.shape) == layouts[layer]["grid"], (arch, layer)


@pytest.mark.parametrize("arch,width,layer", [("swin_t", 0.25, "features.3.1"), ("shufflenet_v2_x0_5", 1.0, "stage2.3")])
def test_measured_fields_where_the_graph_is_not_understood(arch, width, layer):
    torch.manual_seed(0)
    layouts = model_layouts(construct(arch, width, meta=True), [layer], 64)
    rf = unit_fields(arch, width, [layer], 64, layouts)[layer]
    assert rf.how == "measured" and rf.shape == tuple(layouts[layer]["grid"])
    t, left, b, r = rf.box(0, 0)
    assert t == 0 and left == 0 and 0 < b <= 64 and 0 < r <= 64


def test_head_replacement_and_width_for_every_family():
    from featdyn.nets.models import _shell, check_width, head_path

    heads = {"vit_b_16": "heads.head", "swin_t": "head", "swin_v2_t": "head", "convnext_tiny": "classifier.2",
             "efficientnet_b0": "classifier.1", "regnet_y_400mf": "fc", "maxvit_t": "classifier.5"}
    for arch, head in heads.items():
        assert head_path(construct(arch, meta=True)) == head, arch
        model = _shell(arch, 1.0, 7)
        assert model.get_submodule(head).out_features == 7, arch
    # scaled transformers keep their module paths and heads divide the embedding
    for arch, width in (("vit_b_16", 1 / 16), ("swin_t", 0.25), ("convnext_tiny", 0.25)):
        small, full = construct(arch, width, meta=True), construct(arch, meta=True)
        assert [n for n, _ in small.named_modules()] == [n for n, _ in full.named_modules()], arch
        assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in full.parameters()) / 8
    for arch in ("efficientnet_b0", "regnet_y_400mf", "maxvit_t"):
        with pytest.raises(FeatdynError, match=rf"width 0.5: .* not '{arch}'"):
            check_width(arch, 0.5)


def test_token_readings_of_the_metrics():
    from featdyn.spec.config import metric_params, token_readings

    cfg = {"metrics": {"p": {"kind": "procrustes"}, "c": {"kind": "cka", "tokens": "cls"},
                       "m": {"kind": "pwsm", "alpha": 0.5, "tokens": "mean"}}}
    assert token_readings(cfg) == ["cls", "mean"]
    assert "tokens" not in metric_params(cfg, "p"), "the default adds no param (nothing reruns)"
    assert metric_params(cfg, "m") == {"kind": "pwsm", "granularity": "layer", "tokens": "mean", "alpha": 0.5}
    bad = {"metrics": {"f": {"kind": "procrustes", "granularity": "filter", "tokens": "cls"}}}
    with pytest.raises(FeatdynError, match=r"metrics.f.tokens: 'cls' .* patch grid"):
        metric_params(bad, "f")


def test_timm_models_stages_tokens_and_refusals():
    """timm: a ViT's blocks are tokens (timm's prefix tokens), its Swin's stages channels-last (timm's
    output_fmt), other stages channels-first; a module timm does not list as a stage is refused."""
    from featdyn.nets.layouts import layer_layouts
    from featdyn.nets.models import check_arch, check_width, head_path

    vit = layer_layouts("timm/vit_tiny_patch16_224", auto_layers(construct("timm/vit_tiny_patch16_224", meta=True),
                                                                  224), 224)
    assert list(vit) == ["blocks.2", "blocks.5", "blocks.8", "blocks.11", "norm"]
    assert all((r["layout"], r["prefix"], r["grid"]) == ("NTC", 1, [14, 14]) for r in vit.values())
    swin = layer_layouts("timm/swin_tiny_patch4_window7_224", ["layers.0", "layers.3"], 224)
    assert swin["layers.0"]["layout"] == "NHWC" and swin["layers.0"]["captured"] == [56, 56, 96]
    assert layer_layouts("timm/resnet10t", ["layer2"], 64)["layer2"]["layout"] == "NCHW"
    with pytest.raises(FeatdynError, match=r"'stages.0.blocks.0' .*feature_info"):
        layer_layouts("timm/convnext_atto", ["stages.0.blocks.0"], 64)
    assert head_path(construct("timm/convnext_atto", meta=True)) == "head.fc"
    with pytest.raises(FeatdynError, match="unknown timm model 'resnet10'"):
        check_arch("timm/resnet10")
    with pytest.raises(FeatdynError, match="width 0.5"):
        check_width("timm/resnet10t", 0.5)
