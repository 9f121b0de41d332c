"""The input region of each unit of a layer, for the qualitative figures, for every family.

- Maps whose graph the analytic reader understands (featdyn.nets.receptive_field: convolutions,
  pooling, pointwise operations, layout permutes and channel norms): the exact receptive field.
- Maps where it meets an operation it cannot reason about (Swin's shifted-window attention,
  ShuffleNet's channel shuffle, MaxViT's partitions): the *measured* support, i.e. the input
  pixels whose gradient is non-zero in a linearised float64 copy of the model (activations made the
  identity, max pooling an average, every weight positive, biases zero, a positive random input),
  computed unit by unit when asked. For windowed attention the box is the set of pixels that can
  reach the unit through the windows it attends over (the shifted windows included).
- Token layers (ViT): the input patch of each token (``patch x patch`` px of its grid cell). Attention
  mixes the whole image from the first block on, so this is the token's own patch, not a receptive
  field: the figures label it so.

Every field says how it was found (``how``: ``exact``, ``measured`` or ``token patch``), and
``units_*.csv`` records it per layer.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from featdyn import FeatdynError
from featdyn.nets.layers import LayerCapture
from featdyn.nets.layouts import arrange
from featdyn.nets.receptive_field import ReceptiveField, _field, trace

log = logging.getLogger("featdyn.nets.unit_fields")

HOW_EXACT, HOW_MEASURED, HOW_TOKEN = "exact", "measured", "token patch"
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
                nn.Tanh, nn.ELU, nn.Mish, nn.Softplus)
# a gradient below this fraction of the largest is no dependence (masked attention leaves exp(-100))
_SUPPORT_RTOL = 1e-12


@dataclass(frozen=True)
class TokenField(ReceptiveField):
    """The patch of each token of a ViT layer: cell (u, v) of the grid, ``size`` px square."""

    how: str = HOW_TOKEN

    def _walk(self, u: int, v: int) -> tuple[int, int, int, int]:
        t, left = u * self.stride[0], v * self.stride[1]
        return (t, left, min(t + self.size[0], self.input_size[0]), min(left + self.size[1], self.input_size[1]))


@dataclass(frozen=True)
class MeasuredField(ReceptiveField):
    """A field measured on a linearised copy: :meth:`box` from the input gradient of each unit;
    the affine description from the centre unit's box."""

    how: str = HOW_MEASURED
    support: Callable[[int, int], tuple[int, int, int, int]] | None = field(default=None, repr=False, compare=False)

    def _walk(self, u: int, v: int) -> tuple[int, int, int, int]:
        return self.support(u, v)


def token_field(layer: str, grid: Sequence[int], image_size: int) -> TokenField:
    h, w = grid
    ph, pw = image_size // h, image_size // w
    return TokenField(layer=layer, input_size=(image_size, image_size), shape=(h, w), size=(ph, pw),
                      stride=(ph, pw), offset=(0, 0), whole=(False, False))


def linearised(model: nn.Module) -> nn.Module:
    """A float64 copy in which every path adds positively (see the module docstring)."""
    lin = copy.deepcopy(model).double().eval()

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, _ACTIVATIONS):
                setattr(parent, name, nn.Identity())
            elif isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                   ceil_mode=child.ceil_mode))
            else:
                swap(child)

    swap(lin)
    with torch.no_grad():
        for name, p in lin.named_parameters():
            p.copy_(p.abs() + 0.1 if not name.endswith("bias") else torch.zeros_like(p))
        for m in lin.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
    return lin


def measured_field(model: nn.Module, layer: str, record: Mapping, image_size: int) -> MeasuredField:
    """The measured support of ``layer`` (a real model, any weights: only its structure counts)."""
    lin = linearised(model)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(1, 3, image_size, image_size, generator=gen, dtype=torch.float64) + 0.5).requires_grad_(True)
    with LayerCapture(lin, [layer], detach=False, transform=lambda spec, t: arrange(t, record)) as cap:
        out = cap.run(x)[layer]
    if out.ndim != 4:
        raise FeatdynError(f"layer {layer!r}: a {out.ndim}-D output has no map to measure a field on")
    shape = tuple(int(s) for s in out.shape[2:])
    boxes: dict[tuple[int, int], tuple[int, int, int, int]] = {}

    def support(u: int, v: int) -> tuple[int, int, int, int]:
        if (u, v) not in boxes:
            (g,) = torch.autograd.grad(out[0, :, u, v].sum(), x, retain_graph=True)
            mag = g.abs().sum(1)[0]
            ys, xs = np.nonzero((mag > _SUPPORT_RTOL * float(mag.max())).numpy()) if float(mag.max()) > 0 else ([], [])
            boxes[(u, v)] = ((int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1) if len(ys)
                             else (0, 0, 0, 0))
        return boxes[(u, v)]

    u0, v0 = shape[0] // 2, shape[1] // 2
    t, left, b, r = support(u0, v0)
    stride = (max(1, image_size // shape[0]), max(1, image_size // shape[1]))
    whole = (t == 0 and b == image_size and shape[0] > 1, left == 0 and r == image_size and shape[1] > 1)
    size = (image_size if whole[0] else b - t, image_size if whole[1] else r - left)
    offset = (0 if whole[0] else t - u0 * stride[0], 0 if whole[1] else left - v0 * stride[1])
    return MeasuredField(layer=layer, input_size=(image_size, image_size), shape=shape, size=size, stride=stride,
                         offset=offset, whole=whole, support=support)


def unit_fields(arch: str, width: float, layers: Sequence[str], image_size: int,
                layouts: Mapping[str, Mapping]) -> dict[str, ReceptiveField]:
    """The field of every layer (see the module docstring); ``layouts`` as the store records them."""
    from featdyn.nets.models import construct

    layers = list(dict.fromkeys(layers))
    out: dict[str, ReceptiveField] = {}
    maps = []
    for layer in layers:
        rec = layouts.get(layer) or {"layout": "NCHW"}
        if rec["layout"] == "NTC":
            out[layer] = token_field(layer, rec["grid"], image_size)
        else:
            maps.append(layer)
    if not maps:
        return out
    meta = construct(arch, width, meta=True)
    try:
        graph, outputs = trace(meta)
        why = None
    except FeatdynError as exc:
        graph = outputs = None
        why = str(exc)
    real = None
    for layer in maps:
        if graph is not None:
            try:
                out[layer] = _field(meta, graph, outputs, layer, (image_size, image_size))
                continue
            except FeatdynError as exc:
                why = str(exc)
        log.info("layer %s: %s; measuring its field on a linearised copy instead", layer, why)
        if real is None:
            real = construct(arch, width).eval()
        out[layer] = measured_field(real, layer, layouts.get(layer) or {"layout": "NCHW", "captured": None}, image_size)
    return out


def how(rf: ReceptiveField) -> str:
    return getattr(rf, "how", HOW_EXACT)
