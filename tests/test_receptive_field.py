"""Receptive fields: hand-derived values, brute force (input-gradient support of a linearised copy),
the paper's layers at 224 px, clipping, and named errors for operations it cannot reason about."""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from featdyn import FeatdynError
from featdyn.nets.layers import LayerCapture
from featdyn.nets.models import construct
from featdyn.nets.receptive_field import receptive_field, receptive_fields
from featdyn.spec.layer_presets import PRESETS

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.Sigmoid)


# -- brute force ------------------------------------------------------------------------------------

def linearised(model: nn.Module) -> nn.Module:
    """A copy where every path adds positively: activations become the identity, max pooling an
    average pooling over the same windows, every weight positive, biases zero, float64. The input
    gradient of a unit is then non-zero exactly on the pixels that can influence it."""
    lin = copy.deepcopy(model).double().eval()

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, ACTIVATIONS):
                setattr(parent, name, nn.Identity())
            elif isinstance(child, nn.MaxPool2d):
                assert child.dilation in (1, (1, 1)), "no dilated average pooling to linearise it into"
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                   ceil_mode=child.ceil_mode))
            else:
                swap(child)

    swap(lin)
    with torch.no_grad():
        for name, p in lin.named_parameters():
            p.copy_(p.abs() + 0.1 if not name.endswith("bias") else torch.zeros_like(p))
        for m in lin.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
    return lin


def brute_boxes(model: nn.Module, layer: str, size: tuple[int, int], units) -> dict:
    """Bounding box of the input-gradient support of each unit (u, v) of ``layer``."""
    lin = linearised(model)
    # a positive input: products of two paths (squeeze-excitation) then have a positive gradient too
    x = torch.ones(1, 3, *size, dtype=torch.float64, requires_grad=True)
    with LayerCapture(lin, [layer], detach=False) as cap:
        out = cap.run(x)[layer]
    boxes = {}
    for u, v in units:
        (g,) = torch.autograd.grad(out[0, :, u, v].sum(), x, retain_graph=True)
        ys, xs = np.nonzero(g.abs().sum(1)[0].numpy() > 0)
        boxes[(u, v)] = ((int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1) if len(ys)
                         else (0, 0, 0, 0))
    return boxes, tuple(out.shape[2:])


def sample_units(shape: tuple[int, int]) -> list[tuple[int, int]]:
    """Corners, edge midpoints and the centre."""
    h, w = shape
    ys, xs = sorted({0, h // 2, h - 1}), sorted({0, w // 2, w - 1})
    return [(u, v) for u in ys for v in xs]


def check_against_brute_force(model, layer, size, units=None):
    rf = receptive_field(model, layer, size)
    boxes, shape = brute_boxes(model, layer, size, sample_units(rf.shape) if units is None else units)
    assert rf.shape == shape, "the traced map size is the real one"
    for (u, v), want in boxes.items():
        assert rf.box(u, v) == want, f"{layer} unit {(u, v)}: {rf.box(u, v)} != brute force {want}"
        t, l, b, r = rf.window(u, v)
        assert t <= want[0] and l <= want[1] and b >= want[2] and r >= want[3], "the affine window covers the box"
    return rf


# -- small networks with each construct ---------------------------------------------------------------

class Chain(nn.Module):
    """conv3 p1 -> relu -> maxpool2 -> conv3 p1 -> conv3 s2 p0."""

    def __init__(self):
        super().__init__()
        self.c1, self.act = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.c3 = nn.Conv2d(4, 4, 3, stride=2)

    def forward(self, x):
        return self.c3(self.c2(self.pool(self.act(self.c1(x)))))


class Skip(nn.Module):
    """A residual block with a strided branch and a strided 1x1 shortcut (ResNet's downsampling)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.a = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.short = nn.Conv2d(4, 4, 1, stride=2)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.stem(x))
        out = self.b(self.relu(self.a(x)))
        out += self.short(x)
        return self.relu(out)


class Concat(nn.Module):
    """Two branches joined along channels: a 5x5 conv and a dilated 3x3 conv (dilation 3)."""

    def __init__(self):
        super().__init__()
        self.wide = nn.Conv2d(3, 2, 5, padding=2)
        self.dilated = nn.Conv2d(3, 2, 3, padding=3, dilation=3)
        self.mix = nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x):
        return self.mix(torch.cat([self.wide(x), self.dilated(x)], 1))


class CeilPool(nn.Module):
    """A ceil_mode pool whose last window hangs over the border, then a padded conv on top."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 3, 3)
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.c2 = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.c2(self.pool(self.c1(x)))


class Uncovered(nn.Module):
    """A strided conv that never reads the last pixel, then a padded conv: the affine window of the
    last unit reaches that pixel through a padding-only unit; the exact box must not."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 3, 3, stride=2)
        self.c2 = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.c2(self.c1(x))


def test_plain_chain_by_hand():
    # c1: 3 px, stride 1, start -1; pool 2/2: 3 + 1 = 4, stride 2, start -1;
    # c2 (3, p1): 4 + 2*2 = 8, start -1 - 1*2 = -3; c3 (3, s2): 8 + 2*2 = 12, stride 4, start -3.
    rf = receptive_field(Chain(), "c3", 32)
    assert rf.size == (12, 12) and rf.stride == (4, 4) and rf.offset == (-3, -3)
    assert rf.shape == (7, 7)  # 32 -> 32 -> 16 -> 16 -> (16 - 3) // 2 + 1
    assert rf.window(2, 5) == (5, 17, 17, 29)
    assert rf.centre(2, 5) == (10.5, 22.5)
    assert rf.box(0, 0) == (0, 0, 9, 9)        # clipped at the top and left
    assert rf.box(6, 6) == (21, 21, 32, 32)    # clipped at the bottom and right
    assert rf.box(0, 6) == (0, 21, 9, 32) and rf.box(6, 0) == (21, 0, 32, 9)
    assert rf.box(3, 3) == (9, 9, 21, 21)      # inside: the whole window
    mid = receptive_field(Chain(), "pool", 32)
    assert (mid.size, mid.stride, mid.offset) == ((4, 4), (2, 2), (-1, -1))
    with pytest.raises(FeatdynError, match="outside"):
        rf.box(7, 0)


def test_rectangular_input_and_kernels():
    net = nn.Sequential(nn.Conv2d(3, 2, (3, 5), stride=(1, 2), padding=(1, 2)), nn.MaxPool2d((2, 3)))
    rf = receptive_field(net, "1", (20, 31))
    # rows: 3, s1, start -1 -> pool 2: 4, s2; columns: 5, s2, start -2 -> pool 3: 5 + 2*2 = 9, s6
    assert rf.size == (4, 9) and rf.stride == (2, 6) and rf.offset == (-1, -2) and rf.shape == (10, 5)
    check_against_brute_force(net, "1", (20, 31))


@pytest.mark.parametrize("net,layer,size", [
    (Chain(), "c3", (32, 32)),
    (Skip(), "relu@3", (17, 17)),
    (Concat(), "mix", (16, 15)),
    (Concat(), "dilated", (16, 15)),
    (CeilPool(), "c2", (14, 14)),
    (CeilPool(), "pool", (14, 14)),
    (Uncovered(), "c2", (12, 12)),
])
def test_small_networks_against_brute_force(net, layer, size):
    torch.manual_seed(0)
    rf = receptive_field(net, layer, size)
    check_against_brute_force(net, layer, size, [(u, v) for u in range(rf.shape[0]) for v in range(rf.shape[1])])


def test_exact_box_is_tighter_than_the_clipped_window_at_a_border():
    rf = receptive_field(Uncovered(), "c2", 12)
    # c1 (3, s2, no padding) reads pixels 0..10 of 12; its units are 0..4.
    assert rf.shape == (5, 5)
    # c2 (3, pad 1): 3 + 2*2 = 7 px, stride 2, start -2: unit 4 -> [6, 13), clipped [6, 12), through
    # c2's padding unit 5, which would read pixels 10..12; c1's real units 3, 4 read 6..10 only.
    assert rf.window(4, 4) == (6, 6, 13, 13)
    assert rf.box(4, 4) == (6, 6, 11, 11)


def test_dilation_and_ceil_mode_by_hand():
    rf = receptive_field(Concat(), "dilated", 16)
    assert rf.size == (7, 7) and rf.offset == (-3, -3)        # 3 taps, dilation 3: span 7, pad 3
    assert rf.box(0, 0) == (0, 0, 4, 4)                        # taps at -3, 0, 3
    assert rf.box(15, 14) == (12, 11, 16, 15)                  # taps at 12, 15, 18 and 11, 14, 17
    pool = receptive_field(CeilPool(), "pool", 14)
    # c1: 14 -> 12 units; ceil((12 - 3) / 2) + 1 = 6 windows (floor would give 5)
    assert pool.shape == (6, 6)
    assert pool.box(5, 5) == (10, 10, 14, 14)                  # its last window reads c1 units 10, 11 only


def test_residual_union_and_centre_offset():
    rf = receptive_field(Skip(), "relu@3", 17)
    # stem 3 (start -1); a: 3 + 2 = 5, s2, start -2; b: 5 + 2*2 = 9, start -4; shortcut 1x1 s2: 3, start -1
    assert rf.size == (9, 9) and rf.stride == (2, 2) and rf.offset == (-4, -4)


@pytest.mark.parametrize("arch,expected", [
    # (size, stride) from the architectures, derived by hand in input pixels:
    # VGG19: blocks of 3x3 convs (each +2 x stride) with 2x2 pools (+1 x stride, stride x2).
    ("vgg19", {"features.3": (5, 1), "features.8": (14, 2), "features.17": (48, 4), "features.26": (116, 8),
               "features.35": (252, 16)}),
    # ResNet50: conv 7/2 (7), maxpool 3/2 (+2*2 = 11, s4); one 3x3 per bottleneck (stride on the 3x3
    # of each stage's first block): layer1 +3*8 = 35; layer2 +8 (s8) +3*16 = 91; layer3 +16 (s16)
    # +5*32 = 267; layer4 +32 (s32) +2*64 = 427.
    ("resnet50", {"relu": (7, 2), "layer1.2": (35, 4), "layer2.3": (91, 8), "layer3.5": (267, 16),
                  "layer4.2": (427, 32)}),
    # DenseNet121: stem 11 (s4); one 3x3 per dense layer; relu2 of layer k sees k-1 of them; a
    # transition adds a 2x2 average pool: block1 11 + 5*8 = 51, transition1 59 (pool: 63, s8);
    # block2 63 + 11*16 = 239, transition2 255 (271 - 8 = 263 after the pool, s16); block3
    # 263 + 23*32 = 999, transition3 1031 (pool: 1047, s32); block4 1047 + 15*64 = 2007.
    ("densenet121", {"features.denseblock1.denselayer6.relu2": (51, 4), "features.transition1.relu": (59, 4),
                     "features.denseblock2.denselayer12.relu2": (239, 8), "features.transition2.relu": (255, 8),
                     "features.denseblock3.denselayer24.relu2": (999, 16), "features.transition3.relu": (1031, 16),
                     "features.denseblock4.denselayer16.relu2": (2007, 32)}),
])
def test_paper_layers_at_224(arch, expected):
    model = construct(arch, meta=True)
    rfs = receptive_fields(model, PRESETS[arch], 224)
    assert {k: (rf.size[0], rf.stride[0]) for k, rf in rfs.items()} == expected
    for rf in rfs.values():
        assert rf.size[0] == rf.size[1] and rf.stride[0] == rf.stride[1] and not any(rf.whole)


def test_resnet50_layer3_is_not_centred_where_the_naive_rule_puts_it():
    rf = receptive_field(construct("resnet50", meta=True), "layer3.5", 224)
    assert rf.shape == (14, 14) and rf.offset == (-133, -133)
    # centre of unit u: -133 + 16u + (267 - 1) / 2 = 16u, not 16u + 8
    assert rf.centre(7, 3) == (112.0, 48.0)
    assert rf.box(7, 7) == (0, 0, 224, 224) and rf.box(0, 0) == (0, 0, 134, 134)


@pytest.mark.parametrize("arch,layers,size,width", [
    ("resnet50", ["layer1.2", "layer2.3"], 48, 0.125),       # residual additions, strided shortcuts
    ("densenet121", ["features.transition1.relu", "features.denseblock2.denselayer3.relu2"], 40, 0.25),
    ("mobilenet_v2", ["features.3", "features.6"], 40, 0.25),  # depthwise convs, linear bottlenecks
    # through layout permutes, LayerNorm and Linear over the channels (a CNBlock runs channels-last)
    ("convnext_tiny", ["features.1.0", "features.3.1"], 48, 0.125),
])
def test_torchvision_models_against_brute_force(arch, layers, size, width):
    torch.manual_seed(0)
    model = construct(arch, width).eval()
    for layer in layers:
        check_against_brute_force(model, layer, (size, size))


def test_map_shapes_match_a_forward_pass_for_many_architectures():
    # Squeeze-excitation (mobilenet_v3, efficientnet) makes every later unit see the whole image.
    for arch, layers in {"googlenet": ["inception3a", "inception4e"], "squeezenet1_0": ["features.12"],
                         "mobilenet_v3_small": ["features.1", "features.12"],
                         "efficientnet_b0": ["features.2"], "regnet_x_400mf": ["trunk_output.block2"],
                         "alexnet": ["features.12"]}.items():
        kwargs = {"aux_logits": False, "init_weights": False} if arch == "googlenet" else {}
        # regnet computes its widths with tensors at construction: not on the meta device
        with torch.device("cpu" if arch.startswith("regnet") else "meta"):
            model = torchvision.models.get_model(arch, weights=None, **kwargs).eval()
            x = torch.empty(1, 3, 96, 96)
            with torch.no_grad(), LayerCapture(model, layers) as cap:
                shapes = {k: tuple(t.shape[2:]) for k, t in cap.run(x).items()}
        for layer in layers:
            rf = receptive_field(model, layer, 96)
            assert rf.shape == shapes[layer], (arch, layer)
            if arch in ("mobilenet_v3_small", "efficientnet_b0") and layer != "features.1":
                assert rf.whole == (True, True) and rf.box(0, 0) == (0, 0, 96, 96), (arch, layer)


def test_squeeze_excitation_against_brute_force():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small().eval()
    rf = check_against_brute_force(model, "features.1", (32, 32))  # the first SE block
    assert rf.whole == (True, True)


def test_multiple_calls_need_a_call_number():
    model = construct("resnet50", meta=True)
    with pytest.raises(FeatdynError, match=r"layer1\.2\.relu@3"):
        receptive_field(model, "layer1.2.relu", 64)
    a = receptive_field(model, "layer1.2.relu@3", 64)
    b = receptive_field(model, "layer1.2", 64)
    assert (a.size, a.stride, a.offset) == (b.size, b.stride, b.offset)
    with pytest.raises(FeatdynError, match="not a module"):
        receptive_field(model, "layer9", 64)


def test_unknown_operation_is_named_with_its_module_path():
    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3)
            self.block = nn.Sequential(nn.Upsample(scale_factor=2), nn.ReLU())

        def forward(self, x):
            return self.block(self.conv(x))

    with pytest.raises(FeatdynError, match=r"Upsample.*'block\.0'"):
        receptive_field(Up(), "block", 16)

    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3)
            self.head = nn.Identity()

        def forward(self, x):
            return self.head(torch.flatten(self.conv(x), 1))

    with pytest.raises(FeatdynError, match="flatten"):
        receptive_field(Flat(), "head", 16)
    # a GroupNorm's statistics span the whole map: not pointwise, so refused
    norm = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3), norm=nn.GroupNorm(2, 4)))
    with pytest.raises(FeatdynError, match=r"GroupNorm.*'norm'"):
        receptive_field(norm, "norm", 16)


def test_too_small_input_is_an_error():
    with pytest.raises(FeatdynError, match="too small"):
        receptive_field(construct("vgg19", meta=True), "features.35", 8)
