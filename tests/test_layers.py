"""Layer presets and hooks: the captured tensors are what the model's submodules compute."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from featdyn import FeatdynError
from featdyn.nets.layers import LayerCapture, layer_shapes, parse_layer, resolve_modules
from featdyn.spec.layer_presets import PRESETS, preset

# The layers as the issue (and docs/design.md, "Layers") state them, with torchvision's module paths.
PAPER_LAYERS = {
    "vgg19": ["features.3", "features.8", "features.17", "features.26", "features.35"],
    "resnet50": ["relu", "layer1.2", "layer2.3", "layer3.5", "layer4.2"],
    "densenet121": [f"features.denseblock{b}.denselayer{k}.relu2" for b, k in ((1, 6), (2, 12), (3, 24), (4, 16))]
    + [f"features.transition{t}.relu" for t in (1, 2, 3)],
}

# (C, H, W) at 224 px from the architectures' definitions (VGG: docs/design.md, 64x224^2 ... 512x14^2).
SHAPES_224 = {
    "vgg19": {"features.3": (64, 224, 224), "features.8": (128, 112, 112), "features.17": (256, 56, 56),
              "features.26": (512, 28, 28), "features.35": (512, 14, 14)},
    "resnet50": {"relu": (64, 112, 112), "layer1.2": (256, 56, 56), "layer2.3": (512, 28, 28),
                 "layer3.5": (1024, 14, 14), "layer4.2": (2048, 7, 7)},
    "densenet121": {"features.denseblock1.denselayer6.relu2": (128, 56, 56),
                    "features.denseblock2.denselayer12.relu2": (128, 28, 28),
                    "features.denseblock3.denselayer24.relu2": (128, 14, 14),
                    "features.denseblock4.denselayer16.relu2": (128, 7, 7),
                    "features.transition1.relu": (256, 56, 56), "features.transition2.relu": (512, 28, 28),
                    "features.transition3.relu": (1024, 14, 14)},
    "mobilenet_v2": {"features.0": (32, 112, 112), "features.3": (24, 56, 56), "features.6": (32, 28, 28),
                     "features.13": (96, 14, 14), "features.18": (1280, 7, 7)},
}


def random_model(arch: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None).eval()
    # Random BatchNorm statistics: with the default (mean 0, var 1) a BN is nearly the identity and
    # a test could not tell a pre-BN from a post-BN tensor.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model


def capture(model: nn.Module, layers: list[str], x: torch.Tensor, **kw) -> dict[str, torch.Tensor]:
    with torch.inference_mode(), LayerCapture(model, layers, **kw) as cap:
        return cap.run(x)


def test_presets_are_the_papers_layers():
    for arch, layers in PAPER_LAYERS.items():
        assert sorted(preset(arch)) == sorted(layers)
    assert set(PRESETS) == {"vgg19", "resnet50", "densenet121", "mobilenet_v2"}
    with pytest.raises(FeatdynError, match="no layer preset for model 'alexnet'"):
        preset("alexnet")


@pytest.mark.parametrize("spec, expected", [("layer1.0.relu", ("layer1.0.relu", None)),
                                            ("layer1.0.relu@3", ("layer1.0.relu", 3))])
def test_parse_layer(spec, expected):
    assert parse_layer(spec) == expected


@pytest.mark.parametrize("spec", ["relu@0", "relu@x", "relu@"])
def test_parse_layer_rejects_bad_call_numbers(spec):
    with pytest.raises(FeatdynError, match="call number"):
        parse_layer(spec)


@pytest.fixture(scope="module")
def resnet():
    return random_model("resnet50")


def test_resnet_block_hook_is_the_post_residual_output(resnet):
    """`layer1.2` (and `layer1.2.relu@3`) = relu(bn3(conv3(...)) + identity), the block's own output."""
    x = torch.randn(2, 3, 64, 64)
    got = capture(resnet, ["relu", "layer1.1", "layer1.2", "layer1.2.relu@3", "layer1.2.relu@2", "layer1.0.bn1"], x)
    with torch.inference_mode():
        m = resnet
        stem = m.relu(m.bn1(m.conv1(x)))
        torch.testing.assert_close(got["relu"], stem, rtol=0, atol=0)
        y = m.layer1[1](m.layer1[0](m.maxpool(stem)))
        torch.testing.assert_close(got["layer1.1"], y, rtol=0, atol=0)
        block = m.layer1[2]
        torch.testing.assert_close(got["layer1.2"], block(y), rtol=0, atol=0)
        # The same tensor spelled out: the ReLU after the residual addition.
        h = block.relu(block.bn1(block.conv1(y)))
        h2 = block.relu(block.bn2(block.conv2(h)))
        pre_add = block.bn3(block.conv3(h2))
        post_add = torch.relu(pre_add + y)
        torch.testing.assert_close(got["layer1.2"], post_add, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got["layer1.2.relu@3"], got["layer1.2"], rtol=0, atol=0)
        torch.testing.assert_close(got["layer1.2.relu@2"], h2, rtol=0, atol=0)
        # The residual matters: without it the tensor is different (the test can tell them apart).
        assert (torch.relu(pre_add) - post_add).abs().max() > 0.1
        # bn1's output is overwritten in place by the ReLU that follows it: the hook copied it first.
        bn1 = m.layer1[0].bn1(m.layer1[0].conv1(m.maxpool(stem)))
        torch.testing.assert_close(got["layer1.0.bn1"], bn1, rtol=0, atol=0)
        assert got["layer1.0.bn1"].min() < 0


def test_plain_hook_on_a_multi_call_relu_is_refused(resnet):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(FeatdynError, match="called 3 times") as err:
        capture(resnet, ["layer1.2.relu"], x)
    for k in (1, 2, 3):
        assert f"layer1.2.relu@{k}" in str(err.value)
    with pytest.raises(FeatdynError, match="only 3 time") as err:
        capture(resnet, ["layer1.2.relu@4"], x)
    assert "layer1.2.relu@3" in str(err.value)


def test_unknown_layer_lists_the_valid_choices(resnet):
    with pytest.raises(FeatdynError, match="not a module of ResNet") as err:
        resolve_modules(resnet, ["layer1.7"])
    assert all(f"'layer1.{i}'" in str(err.value) for i in range(3)), str(err.value)
    with pytest.raises(FeatdynError) as err:
        resolve_modules(resnet, ["layr2.3"])
    assert "'layer2.3'" in str(err.value) and "'layer4'" in str(err.value)
    with pytest.raises(FeatdynError, match="twice"):
        resolve_modules(resnet, ["relu", "relu"])


def test_capture_for_storage_refuses_reduced_precision():
    model = random_model("mobilenet_v2")
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(FeatdynError, match="float32"):
        capture(model, ["features.1"], torch.randn(1, 3, 32, 32), host=True)


def _direct(arch: str, m: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The preset's tensors computed by calling the model's submodules by hand."""
    if arch in ("vgg19", "mobilenet_v2"):
        idx = [int(layer.split(".")[1]) for layer in SHAPES_224[arch]]
        return {f"features.{i}": m.features[: i + 1](x) for i in idx}
    if arch == "resnet50":
        out = {"relu": m.relu(m.bn1(m.conv1(x)))}
        h = m.maxpool(out["relu"])
        for stage, last in (("layer1", 2), ("layer2", 3), ("layer3", 5), ("layer4", 2)):
            h = getattr(m, stage)(h)
            out[f"{stage}.{last}"] = h
        return out
    out = {}
    f = m.features
    h = f.pool0(f.relu0(f.norm0(f.conv0(x))))
    for b, last in ((1, 6), (2, 12), (3, 24), (4, 16)):
        block = getattr(f, f"denseblock{b}")
        feats = [h]
        for i in range(1, last + 1):
            layer = getattr(block, f"denselayer{i}")
            if i == last:
                out[f"features.denseblock{b}.denselayer{last}.relu2"] = layer.relu2(layer.norm2(layer.bn_function(feats)))
            feats.append(layer(feats))
        h = torch.cat(feats, 1)
        if b < 4:
            t = getattr(f, f"transition{b}")
            out[f"features.transition{b}.relu"] = t.relu(t.norm(h))
            h = t(h)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vgg19", "resnet50", "densenet121", "mobilenet_v2"])
def test_preset_shapes_at_224_and_direct_calls(arch):
    """Shapes of the preset at 224 px (random init, eval, batch 1), each equal to a direct call."""
    model = random_model(arch)
    x = torch.randn(1, 3, 224, 224)
    got = capture(model, preset(arch), x)
    assert {k: tuple(v.shape[1:]) for k, v in got.items()} == SHAPES_224[arch]
    with torch.inference_mode():
        want = _direct(arch, model, x)
    assert set(want) == set(got)
    for layer in got:
        torch.testing.assert_close(got[layer], want[layer], rtol=1e-5, atol=1e-5, msg=f"{arch} {layer}")
    if arch == "vgg19":
        # A conv whose output the next ReLU(inplace=True) overwrites: captured before the ReLU.
        conv = capture(model, ["features.2"], x)["features.2"]
        with torch.inference_mode():
            torch.testing.assert_close(conv, model.features[:3](x), rtol=0, atol=0)
        assert conv.min() < 0


def test_layer_lists_are_checked_without_weights():
    """layer_shapes: the paper's shapes and the same errors, from a meta-device pass (no compute)."""
    for arch in ("vgg19", "resnet50", "densenet121", "mobilenet_v2"):
        assert layer_shapes(arch, preset(arch), 224) == SHAPES_224[arch]
    assert layer_shapes("resnet50", ["layer1.0.relu@2"], 64) == {"layer1.0.relu@2": (64, 16, 16)}
    with pytest.raises(FeatdynError, match=r"layer1\.0\.relu@3"):
        layer_shapes("resnet50", ["layer1.0.relu"], 64)
    with pytest.raises(FeatdynError, match="features.denseblock1"):
        layer_shapes("densenet121", ["denseblock1.denselayer6.relu2"], 64)
