"""Exact receptive fields of a CNN's units, derived from the model's own graph (torch.fx).

The model is traced symbolically (no forward pass, no weights needed: a model on the meta device
works) and every operation between the input and the chosen layer is read as one of three kinds:

- a *window* per spatial axis (kernel, stride, padding, dilation, ceil_mode): convolutions, max and
  average pooling, adaptive pooling to a size that divides the input (global pooling included);
- *pointwise* (activations, eval-mode batch norm, dropout, stochastic depth, ...): the field passes;
- a *merge* of several maps (residual ``+``, SE ``*``, dense ``cat`` along channels): the union of
  the inputs' fields. An input of 1 x 1 broadcast over a larger map (a squeeze-excitation scale)
  makes every unit depend on the whole image along that axis.

Anything else on the way (flatten, reshape, upsampling, permutes, group/instance norms whose
statistics span the map, ...) is an error naming the operation and its module path: a field that
might be wrong is never returned.

Two descriptions come out, both in input pixels along (rows, columns):

- the classic affine one (Araujo et al., Distill 2019): unit ``u`` sees ``[u*stride + offset,
  u*stride + offset + size)``, unclipped; ``offset`` is usually negative (padding). It gives the
  window a crop must cover so that the unit's centre stays at the same place in every crop.
- the exact box (:meth:`ReceptiveField.box`): the bounding box of the input pixels that can
  influence the unit, found by walking the graph backwards from that one unit with per-axis index
  sets, clipped at every map's border. It is what a gradient of a linearised copy of the network
  would touch; at the borders it can be smaller than the clipped affine window, because the affine
  composition also counts units that exist only as padding of an intermediate map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch.fx as fx
from torch import nn

from featdyn import FeatdynError
from featdyn.nets.layers import parse_layer

# ---- what each operation is -----------------------------------------------------------------

# Leaf modules that act on each spatial position separately (eval mode).
POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.BatchNorm2d, nn.SyncBatchNorm, nn.LocalResponseNorm,
)
# Functions and tensor methods (by name: fx records operator.add, torch.add or a torch._C builtin
# depending on how the model calls it) that act on each spatial position separately.
POINTWISE_NAMES = frozenset({
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "elu", "elu_",
    "selu", "celu", "gelu", "silu", "mish", "hardswish", "hardsigmoid", "sigmoid", "sigmoid_", "tanh",
    "tanh_", "softplus", "dropout", "dropout2d", "alpha_dropout", "stochastic_depth", "batch_norm",
    "clamp", "clamp_", "clip", "neg", "abs", "contiguous", "clone", "detach", "float",
})
# Operations over the channel axis alone (LayerNorm, Linear): pointwise in space when the channels
# are the last axis, i.e. between the layout permutes of a ConvNeXt block or a Swin stage; checked
# by following every permute from the channels-first input (a window op on permuted axes, or a
# channel op whose last axis is not the channels, is refused).
CHANNEL_MODULES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.Linear)
CHANNEL_NAMES = frozenset({"layer_norm", "linear"})
# Elementwise functions of several maps (broadcasting).
MERGE_NAMES = frozenset({"add", "add_", "iadd", "sub", "sub_", "isub", "mul", "mul_", "imul", "truediv",
                         "div", "div_", "itruediv", "maximum", "minimum"})
CAT_NAMES = frozenset({"cat", "concat", "concatenate"})
# Positional parameter names of the functional forms we read.
_SIGNATURES = {
    "conv2d": ["input", "weight", "bias", "stride", "padding", "dilation", "groups"],
    "max_pool2d": ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"],
    "avg_pool2d": ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                   "divisor_override"],
    "adaptive_avg_pool2d": ["input", "output_size"],
    "adaptive_max_pool2d": ["input", "output_size", "return_indices"],
    "mean": ["input", "dim", "keepdim"],
    "cat": ["tensors", "dim"],
}


def _pair(v, name: str = "") -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    if len(v) == 1:
        return (int(v[0]), int(v[0]))
    if len(v) != 2:
        raise ValueError(f"{name} {v!r} is not a pair")
    return (int(v[0]), int(v[1]))


@dataclass(frozen=True)
class Window:
    """A sliding window along one axis: output unit ``u`` reads input units ``u*stride - pad + j*dilation``
    for ``j`` in ``range(kernel)``; ``pad_total`` is the padding of both sides together."""

    kernel: int
    stride: int = 1
    pad: int = 0
    pad_total: int = 0
    dilation: int = 1
    ceil: bool = False

    @property
    def span(self) -> int:
        return self.dilation * (self.kernel - 1) + 1

    def out_len(self, n: int) -> int:
        """Output length for an input of ``n`` units (PyTorch's conv / pooling shape rule)."""
        room = n + self.pad_total - self.span
        if room < 0:
            return 0
        if not self.ceil:
            return room // self.stride + 1
        out = -(-room // self.stride) + 1
        # A window must start inside the input or its left padding (PyTorch's ceil_mode rule).
        if (out - 1) * self.stride >= n + self.pad:
            out -= 1
        return out

    def back(self, mask: np.ndarray, n_in: int) -> np.ndarray:
        """The input units (mask of length ``n_in``) that the output units in ``mask`` read."""
        units = np.flatnonzero(mask)
        idx = (units[:, None] * self.stride - self.pad + np.arange(self.kernel)[None, :] * self.dilation).ravel()
        out = np.zeros(n_in, dtype=bool)
        out[idx[(idx >= 0) & (idx < n_in)]] = True
        return out


@dataclass(frozen=True)
class Axis:
    """The affine field along one axis at one node: ``n`` units, unit ``u`` sees input pixels
    ``[u*stride + start, u*stride + start + size)`` (unclipped); ``whole``: every unit depends on the
    whole input along this axis (a broadcast 1 x 1 map joined in)."""

    n: int
    size: int
    stride: int
    start: int
    whole: bool = False

    def through(self, w: Window) -> Axis:
        return Axis(w.out_len(self.n), self.size + (w.span - 1) * self.stride, self.stride * w.stride,
                    self.start - w.pad * self.stride, self.whole)


@dataclass
class _Op:
    """One node of the traced graph, read: its kind, its activation inputs and, for a window, the
    window per axis (rows, columns)."""

    kind: str  # "input", "window", "pointwise", "merge", "permute", "channelwise"
    inputs: list[fx.Node]
    windows: tuple[Window, Window] | None = None
    dims: tuple[int, ...] | None = None  # of a permute


class _Reader:
    """Reads a traced graph into :class:`_Op` per node (only nodes the asked layer depends on)."""

    def __init__(self, model: nn.Module, graph: fx.Graph, layer: str) -> None:
        self.model, self.graph, self.layer = model, graph, layer
        self.modules = dict(model.named_modules())
        self._dynamic: dict[fx.Node, bool] = {}
        for node in graph.nodes:  # topological order
            self._dynamic[node] = node.op == "placeholder" or any(self._dynamic.get(a, False)
                                                                  for a in node.all_input_nodes)

    def where(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return str(node.target)
        stack = node.meta.get("nn_module_stack") or {}
        return next(reversed(stack.values()))[0] if stack else "<model>"

    def fail(self, node: fx.Node, what: str) -> FeatdynError:
        return FeatdynError(f"receptive field of layer {self.layer!r}: cannot reason about {what} "
                            f"(graph node {node.name!r}) in module {self.where(node)!r}; supported are "
                            f"convolutions, pooling, pointwise operations, additions/products and "
                            f"concatenation along channels")

    def inputs(self, node: fx.Node) -> list[fx.Node]:
        """The node's inputs that carry activations (not weights, buffers or constants)."""
        return [a for a in node.all_input_nodes if self._dynamic[a]]

    @staticmethod
    def _name(target) -> str:
        return target if isinstance(target, str) else getattr(target, "__name__", str(target))

    def _args(self, node: fx.Node, name: str) -> dict:
        sig = _SIGNATURES[name]
        out = dict(zip(sig, node.args))
        out.update(node.kwargs)
        return out

    def _param(self, node: fx.Node, what: fx.Node):
        if what.op != "get_attr":
            raise self.fail(node, f"a convolution whose weight is computed ({what.name})")
        obj = self.model
        for part in str(what.target).split("."):
            obj = getattr(obj, part)
        return obj

    def read(self, node: fx.Node, n_in: tuple[int, int] | None) -> _Op:
        """Describe ``node``; ``n_in`` is the (rows, columns) of its first activation input (for
        adaptive pooling)."""
        if node.op == "placeholder":
            return _Op("input", [])
        ins = self.inputs(node)
        if node.op == "call_module":
            m = self.modules[node.target]
            if isinstance(m, nn.Conv2d):
                if m.padding_mode != "zeros":
                    raise self.fail(node, f"Conv2d with padding_mode={m.padding_mode!r} (its field wraps or mirrors)")
                return _Op("window", ins[:1], self._conv(node, m.kernel_size, m.stride, m.padding, m.dilation))
            if isinstance(m, nn.MaxPool2d):
                return _Op("window", ins[:1], self._pool(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode))
            if isinstance(m, nn.AvgPool2d):
                return _Op("window", ins[:1], self._pool(m.kernel_size, m.stride, m.padding, 1, m.ceil_mode))
            if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                return _Op("window", ins[:1], self._adaptive(node, m.output_size, n_in))
            if isinstance(m, POINTWISE_MODULES):
                return self._pointwise(node, ins, type(m).__name__)
            if isinstance(m, CHANNEL_MODULES):
                return _Op("channelwise", self._one(node, ins, type(m).__name__))
            raise self.fail(node, f"module {type(m).__name__}")
        if node.op in ("call_function", "call_method"):
            name = self._name(node.target)
            if name in POINTWISE_NAMES:
                return self._pointwise(node, ins, name)
            if name in CHANNEL_NAMES:
                return _Op("channelwise", self._one(node, ins, name))
            if name == "permute":
                dims = node.args[1:] if len(node.args) > 2 else node.args[1] if len(node.args) > 1 else node.kwargs["dims"]
                return _Op("permute", self._one(node, ins, name), dims=tuple(int(d) for d in dims))
            if name in MERGE_NAMES:
                return _Op("merge", ins)
            if name in CAT_NAMES:
                a = self._args(node, "cat")
                if a.get("dim", 0) not in (1, -3):
                    raise self.fail(node, f"{name} along dim {a.get('dim', 0)} (only channels, dim 1, keep the map)")
                return _Op("merge", ins)
            if name == "conv2d":
                a = self._args(node, "conv2d")
                weight = self._param(node, a["weight"])
                return _Op("window", ins[:1], self._conv(node, tuple(weight.shape[2:]), a.get("stride", 1),
                                                         a.get("padding", 0), a.get("dilation", 1)))
            if name in ("max_pool2d", "avg_pool2d"):
                a = self._args(node, name)
                if a.get("return_indices"):
                    raise self.fail(node, f"{name} returning indices")
                return _Op("window", ins[:1], self._pool(a["kernel_size"], a.get("stride"), a.get("padding", 0),
                                                         a.get("dilation", 1), a.get("ceil_mode", False)))
            if name in ("adaptive_avg_pool2d", "adaptive_max_pool2d"):
                a = self._args(node, name)
                return _Op("window", ins[:1], self._adaptive(node, a["output_size"], n_in))
            if name == "mean":
                a = self._args(node, "mean")
                dims = a.get("dim")
                dims = {dims} if isinstance(dims, int) else set(dims or ())
                if {d % 4 for d in dims} == {2, 3} and a.get("keepdim", False):
                    return _Op("window", ins[:1], self._adaptive(node, (1, 1), n_in))
                raise self.fail(node, f"mean over dims {sorted(dims)} with keepdim={a.get('keepdim', False)}")
            raise self.fail(node, f"{node.op} {name!r}")
        raise self.fail(node, f"a {node.op} node")

    def _one(self, node: fx.Node, ins: list[fx.Node], what: str) -> list[fx.Node]:
        if len(ins) != 1:
            raise self.fail(node, f"{what} with {len(ins)} activation inputs")
        return ins

    def _pointwise(self, node: fx.Node, ins: list[fx.Node], what: str) -> _Op:
        if len(ins) != 1:
            raise self.fail(node, f"{what} with {len(ins)} activation inputs")
        return _Op("pointwise", ins)

    def _conv(self, node, kernel, stride, padding, dilation) -> tuple[Window, Window]:
        k, s, d = _pair(kernel), _pair(stride), _pair(dilation)
        if isinstance(padding, str):
            if padding == "valid":
                p, total = (0, 0), (0, 0)
            elif padding == "same":
                # PyTorch pads d*(k-1) in total, the smaller half first.
                total = tuple(d[i] * (k[i] - 1) for i in range(2))
                p = tuple(t // 2 for t in total)
            else:
                raise self.fail(node, f"convolution padding {padding!r}")
        else:
            p = _pair(padding)
            total = (2 * p[0], 2 * p[1])
        return tuple(Window(k[i], s[i], p[i], total[i], d[i]) for i in range(2))  # type: ignore[return-value]

    def _pool(self, kernel, stride, padding, dilation, ceil) -> tuple[Window, Window]:
        k = _pair(kernel)
        s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _pair(stride)
        p, d = _pair(padding), _pair(dilation)
        return tuple(Window(k[i], s[i], p[i], 2 * p[i], d[i], bool(ceil)) for i in range(2))  # type: ignore

    def _adaptive(self, node, output_size, n_in) -> tuple[Window, Window]:
        out = (output_size, output_size) if isinstance(output_size, int) or output_size is None else tuple(output_size)
        wins = []
        for i in range(2):
            n, o = n_in[i], out[i]
            if o is None or o == n:
                wins.append(Window(1))
            elif n % o == 0:
                # Equal, non-overlapping windows: adaptive pooling is then an ordinary pooling.
                wins.append(Window(n // o, n // o))
            else:
                raise self.fail(node, f"adaptive pooling from {n} to {o} units (windows of unequal size)")
        return tuple(wins)  # type: ignore[return-value]


class _Recorder(fx.Tracer):
    """A tracer that also records every module call's output (composite modules included), so that
    a layer spec ``path`` / ``path@k`` finds the node the k-th call of ``path`` returned."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: dict[str, list] = {}

    def call_module(self, m, forward, args, kwargs):
        out = super().call_module(m, forward, args, kwargs)
        self.outputs.setdefault(self.path_of_module(m), []).append(out)
        return out


def trace(model: nn.Module) -> tuple[fx.Graph, dict[str, list]]:
    """Symbolically trace ``model``: its graph and {module path: outputs of each call, in order}."""
    tracer = _Recorder()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # noqa: BLE001 - torch.fx raises many types; all mean "cannot trace"
        raise FeatdynError(f"cannot trace {type(model).__name__} with torch.fx to find its receptive fields: "
                           f"{type(exc).__name__}: {exc}") from exc
    return graph, tracer.outputs


def _layer_node(outputs: dict[str, list], model: nn.Module, spec: str) -> fx.Node:
    path, call = parse_layer(spec)
    calls = outputs.get(path)
    if not calls:
        from featdyn.nets.layers import resolve_modules

        resolve_modules(model, [spec])  # an unknown path: the error lists the valid choices
        raise FeatdynError(f"layer {spec!r} is not called in the traced forward pass")
    if call is None and len(calls) > 1:
        raise FeatdynError(f"layer {path!r} is called {len(calls)} times per forward pass; say which call: "
                           f"{[f'{path}@{k}' for k in range(1, len(calls) + 1)]}")
    if call is not None and call > len(calls):
        raise FeatdynError(f"layer {spec!r}: the module is called only {len(calls)} time(s) per forward pass")
    out = calls[(call or 1) - 1]
    node = getattr(out, "node", None)
    if not isinstance(node, fx.Node):
        raise FeatdynError(f"layer {spec!r} returns {type(out).__name__}, not a tensor")
    return node


@dataclass(frozen=True)
class ReceptiveField:
    """The receptive field of the units of one layer, for a ``input_size`` input.

    ``size``, ``stride``, ``offset`` (rows, columns) are the affine description: unit (u, v) sees
    rows ``[u*stride[0] + offset[0], ... + size[0])`` and likewise columns, unclipped; ``shape`` is
    the layer's map size; ``whole[i]`` says every unit sees the whole input along axis i (then
    ``size[i]`` is the input's length). :meth:`box` is exact and clipped."""

    layer: str
    input_size: tuple[int, int]
    shape: tuple[int, int]
    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]
    whole: tuple[bool, bool]
    _order: list = field(repr=False, compare=False, default_factory=list)
    _cache: dict = field(repr=False, compare=False, default_factory=dict)

    def _check(self, u: int, v: int) -> None:
        if not (0 <= u < self.shape[0] and 0 <= v < self.shape[1]):
            raise FeatdynError(f"unit ({u}, {v}) is outside layer {self.layer!r}'s "
                               f"{self.shape[0]} x {self.shape[1]} map")

    def window(self, u: int, v: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right), half-open and unclipped (may reach beyond the image): the
        affine window of unit (u, v), the same size for every unit, centred on :meth:`centre`."""
        self._check(u, v)
        lo = [0, 0]
        hi = list(self.input_size)
        for i, w in enumerate((u, v)):
            if not self.whole[i]:
                lo[i] = w * self.stride[i] + self.offset[i]
                hi[i] = lo[i] + self.size[i]
        return (lo[0], lo[1], hi[0], hi[1])

    def centre(self, u: int, v: int) -> tuple[float, float]:
        """Input coordinates (row, column; pixel centres are integers) of unit (u, v)'s centre."""
        t, l, b, r = self.window(u, v)
        return ((t + b - 1) / 2, (l + r - 1) / 2)

    def box(self, u: int, v: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right), half-open, within the image: the bounding box of the input
        pixels that can influence unit (u, v). Empty ((0, 0, 0, 0)) for a unit that sees padding only."""
        self._check(u, v)
        key = (u, v)
        if key not in self._cache:
            self._cache[key] = self._walk(u, v)
        return self._cache[key]

    def _walk(self, u: int, v: int) -> tuple[int, int, int, int]:
        # Backwards in topological order, each node's (rows, columns) index masks: the units of
        # that map that can reach the asked unit. Rows and columns travel separately (every op is
        # separable); a path is dropped when either axis is empty (it reads padding only).
        masks: dict[fx.Node, tuple[np.ndarray, np.ndarray]] = {}
        target, _, _, shape = self._order[-1]
        my, mx = np.zeros(shape[0], bool), np.zeros(shape[1], bool)
        my[u], mx[v] = True, True
        masks[target] = (my, mx)
        for node, op, in_shapes, shape in reversed(self._order):
            if node not in masks:
                continue
            my, mx = masks.pop(node)
            if op.kind == "input":
                if not (my.any() and mx.any()):
                    return (0, 0, 0, 0)
                ys, xs = np.flatnonzero(my), np.flatnonzero(mx)
                return (int(ys[0]), int(xs[0]), int(ys[-1]) + 1, int(xs[-1]) + 1)
            for src, (ny, nx) in zip(op.inputs, in_shapes):
                if op.kind == "window":
                    iy, ix = op.windows[0].back(my, ny), op.windows[1].back(mx, nx)
                elif (ny, nx) != shape:  # a broadcast input (1 along an axis)
                    iy = my if ny == shape[0] else np.ones(ny, bool) & my.any()
                    ix = mx if nx == shape[1] else np.ones(nx, bool) & mx.any()
                else:
                    iy, ix = my, mx
                if not (iy.any() and ix.any()):
                    continue
                if src in masks:
                    masks[src] = (masks[src][0] | iy, masks[src][1] | ix)
                else:
                    masks[src] = (iy.copy(), ix.copy())
        return (0, 0, 0, 0)


def receptive_field(model: nn.Module, layer: str, input_size: int | Sequence[int]) -> ReceptiveField:
    """The receptive field of ``layer`` (a module path, or ``path@k`` for the k-th call, as in
    featdyn.nets.layers) of ``model`` for an ``input_size`` (S or (H, W)) input, from the model's traced
    graph. The model may live on the meta device (only its structure is read)."""
    graph, outputs = trace(model)
    return _field(model, graph, outputs, layer, _pair(input_size, "input_size"))


def receptive_fields(model: nn.Module, layers: Sequence[str],
                     input_size: int | Sequence[int]) -> dict[str, ReceptiveField]:
    """:func:`receptive_field` of several layers of one model (traced once)."""
    graph, outputs = trace(model)
    return {layer: _field(model, graph, outputs, layer, _pair(input_size, "input_size")) for layer in layers}


def _field(model: nn.Module, graph: fx.Graph, outputs: dict[str, list], layer: str,
           size: tuple[int, int]) -> ReceptiveField:
    target = _layer_node(outputs, model, layer)
    reader = _Reader(model, graph, layer)
    # The nodes the layer depends on, in topological order, each read once with its field.
    needed: set[fx.Node] = set()
    stack = [target]
    while stack:
        node = stack.pop()
        if node in needed:
            continue
        needed.add(node)
        stack.extend(reader.inputs(node))
    fields: dict[fx.Node, tuple[Axis, Axis]] = {}
    # the order of each node's axes, as positions of (N, C, H, W): permutes change it
    axes: dict[fx.Node, tuple[int, ...]] = {}
    order = []
    for node in graph.nodes:
        if node not in needed:
            continue
        first = fields[reader.inputs(node)[0]] if reader.inputs(node) else None
        op = reader.read(node, (first[0].n, first[1].n) if first else None)
        at = axes[op.inputs[0]] if op.inputs else (0, 1, 2, 3)
        if op.kind == "merge" and len({axes[i] for i in op.inputs}) > 1:
            raise reader.fail(node, "a merge of maps with differently permuted axes")
        if op.kind == "window" and at != (0, 1, 2, 3):
            raise reader.fail(node, f"a window operation on axes permuted to {at}")
        if op.kind == "channelwise" and at[-1] != 1:
            raise reader.fail(node, f"a channel operation whose last axis is not the channels (axes {at})")
        if op.kind == "permute":
            if sorted(op.dims) != list(range(len(at))):
                raise reader.fail(node, f"permute{op.dims} of a {len(at)}-D map")
            at = tuple(at[d] for d in op.dims)
        axes[node] = at
        if op.kind == "input":
            out = (Axis(size[0], 1, 1, 0), Axis(size[1], 1, 1, 0))
        elif not op.inputs:
            raise reader.fail(node, "an operation without an activation input")
        elif op.kind == "window":
            out = (first[0].through(op.windows[0]), first[1].through(op.windows[1]))
            if out[0].n < 1 or out[1].n < 1:
                raise FeatdynError(f"receptive field of layer {layer!r}: the input of {size[0]} x {size[1]} px is "
                                   f"too small for module {reader.where(node)!r} (its output would be empty)")
        elif op.kind in ("pointwise", "permute", "channelwise"):
            out = first
        else:
            out = _merge(reader, node, [fields[i] for i in op.inputs])
        fields[node] = out
        order.append((node, op, [(fields[i][0].n, fields[i][1].n) for i in op.inputs], (out[0].n, out[1].n)))
    # The target last: the backward walk starts there (nodes after it in graph order are not needed).
    assert order[-1][0] is target
    fy, fx_ = fields[target]
    return ReceptiveField(
        layer=layer, input_size=size, shape=(fy.n, fx_.n),
        size=(size[0] if fy.whole else fy.size, size[1] if fx_.whole else fx_.size),
        stride=(fy.stride, fx_.stride), offset=(0 if fy.whole else fy.start, 0 if fx_.whole else fx_.start),
        whole=(fy.whole, fx_.whole), _order=order)


def _merge(reader: _Reader, node: fx.Node, ins: list[tuple[Axis, Axis]]) -> tuple[Axis, Axis]:
    out = []
    for i in range(2):
        axes = [a[i] for a in ins]
        n = max(a.n for a in axes)
        full = [a for a in axes if a.n == n]
        if any(a.n not in (1, n) for a in axes):
            raise reader.fail(node, f"a merge of maps of {sorted({a.n for a in axes})} units along axis {i}")
        if len({a.stride for a in full}) > 1:
            raise reader.fail(node, f"a merge of maps with strides {sorted({a.stride for a in full})} along axis {i}")
        start = min(a.start for a in full)
        end = max(a.start + a.size for a in full)
        # A 1-unit map broadcast over n > 1 units: each unit then sees everything that one saw.
        whole = any(a.whole for a in axes) or (n > 1 and len(full) < len(axes))
        out.append(Axis(n, end - start, full[0].stride, start, whole))
    return tuple(out)  # type: ignore[return-value]


def describe(rf: ReceptiveField) -> str:
    """One line: layer, map shape, field size, stride and offset."""
    return (f"{rf.layer}: {rf.shape[0]}x{rf.shape[1]} units, field {rf.size[0]}x{rf.size[1]} px, stride "
            f"{rf.stride[0]}x{rf.stride[1]}, offset {rf.offset[0]},{rf.offset[1]}"
            + (" (whole image along an axis)" if any(rf.whole) else ""))


