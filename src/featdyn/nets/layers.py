"""Which feature maps are compared: layer presets and forward hooks that capture exactly them.

A layer is named by its module path (``features.3``, ``layer1.2``). A module that runs more than
once per forward pass (torchvision's Bottleneck calls its one ``relu`` three times) must say which
call with ``@k`` (1-based): ``layer1.0.relu@3`` is the ReLU after the residual addition. Without it
the capture is refused, because a plain hook would silently see the wrong tensor.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence

import torch
from torch import nn

from featdyn import FeatdynError


def parse_layer(spec: str) -> tuple[str, int | None]:
    """'path' -> (path, None); 'path@k' -> (path, k) with k >= 1."""
    path, sep, call = spec.partition("@")
    if not sep:
        return path, None
    if not call.isdigit() or int(call) < 1:
        raise FeatdynError(f"layer {spec!r}: the part after '@' must be a call number >= 1")
    return path, int(call)


def _choices(path: str, names: Sequence[str]) -> str:
    """The valid module paths near ``path``: the children of its deepest existing ancestor, and
    the closest names overall (a typo in any component)."""
    parts = path.split(".")
    parent = next((".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1) if ".".join(parts[:i]) in names), "")
    depth = parent.count(".") + 1 if parent else 0
    children = [n for n in names if n and n.count(".") == depth and (not parent or n.startswith(parent + "."))]
    close = difflib.get_close_matches(path, [n for n in names if n], n=6, cutoff=0.6)
    where = f"modules under {parent!r}" if parent else "top-level modules"
    return f"{where}: {children[:40]}{' ...' if len(children) > 40 else ''}; closest names: {close}"


def resolve_modules(model: nn.Module, layers: Sequence[str]) -> dict[str, nn.Module]:
    """Map each layer spec to its module; unknown paths are an error listing the valid choices."""
    modules = dict(model.named_modules())
    out = {}
    for spec in layers:
        path, _ = parse_layer(spec)
        if path not in modules or path == "":
            raise FeatdynError(f"layer {path!r} is not a module of {type(model).__name__}; "
                               f"{_choices(path, list(modules))}")
        out[spec] = modules[path]
    if len(set(out)) != len(list(layers)):
        raise FeatdynError(f"layers {list(layers)} name a layer twice")
    return out


class LayerCapture:
    """Forward hooks that keep the output of each requested layer (the right call of it).

    Use as a context manager around forward passes; :meth:`run` returns {layer spec: tensor} of
    one pass. Call counts are checked after every pass: a module called several times without
    ``@k``, or called fewer than k times, is an error naming the valid choices.

    The hook copies the tensor at the moment the layer returns it: a later in-place operation
    (``ReLU(inplace=True)`` after a BatchNorm, a residual ``+=``) would otherwise change what was
    captured. With ``host=True`` (extraction) the copy goes to host memory as float32: a clone on
    CPU, an asynchronous copy into pinned memory on CUDA (enqueued on the compute stream, so it
    reads the tensor before any later kernel can modify it); :attr:`ready` is then a CUDA event
    that completes when the copies have landed. ``host=True`` refuses tensors that are not
    float32: stored activations are never computed in bf16/fp16 (autocast must be off).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], detach: bool = True, host: bool = False,
                 transform: Callable[[str, torch.Tensor], dict[str, torch.Tensor]] | None = None) -> None:
        self.model = model
        # transform(spec, tensor) -> {suffix: tensor}: the captured tensor rearranged before it is
        # copied (featdyn.nets.layouts.arrange); each part is kept as captured[spec + suffix]
        self.transform = transform
        self.layers = list(layers)
        self.modules = resolve_modules(model, self.layers)
        self.detach = detach
        self.host = host
        self.captured: dict[str, torch.Tensor] = {}
        self.ready: torch.cuda.Event | None = None
        self._calls: dict[str, int] = {}
        self._handles: list = []

    def _take(self, spec: str, output: torch.Tensor) -> torch.Tensor:
        t = output.detach() if self.detach else output
        if not self.host:
            return t.clone(memory_format=torch.contiguous_format)
        if t.dtype != torch.float32:
            raise FeatdynError(f"layer {spec!r} computed {t.dtype}, but stored activations must be computed "
                               f"in float32 (run the model in float32 without autocast)")
        if t.device.type == "cpu":
            return t.clone(memory_format=torch.contiguous_format)
        return t.contiguous().to("cpu", non_blocking=True)

    def _hook(self, spec: str):
        _, want = parse_layer(spec)

        def hook(_module, _inputs, output):
            self._calls[spec] = self._calls.get(spec, 0) + 1
            if want is None or self._calls[spec] == want:
                if not isinstance(output, torch.Tensor):
                    raise FeatdynError(f"layer {spec!r} returns {type(output).__name__}, not a tensor")
                if self.transform is None:
                    self.captured[spec] = self._take(spec, output)
                else:
                    t = output.detach() if self.detach else output
                    for suffix, part in self.transform(spec, t).items():
                        self.captured[spec + suffix] = self._take(spec, part)
        return hook

    def __enter__(self) -> LayerCapture:
        for spec, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._hook(spec)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One forward pass; return {layer spec: captured tensor} in the order of ``layers``."""
        self._calls.clear()
        self.captured = {}
        self.model(x)
        self.check_calls()
        self.ready = None
        if self.host and x.device.type == "cuda":
            self.ready = torch.cuda.Event()
            self.ready.record()
        out = {spec: self.captured[spec] for spec in self.layers}
        return out | {k: v for k, v in self.captured.items() if k not in out}

    def check_calls(self) -> None:
        for spec in self.layers:
            path, want = parse_layer(spec)
            n = self._calls.get(spec, 0)
            if n == 0:
                raise FeatdynError(f"layer {spec!r} was not called in the forward pass")
            if want is None and n > 1:
                raise FeatdynError(f"layer {path!r} is called {n} times per forward pass; say which call: "
                                   f"{[f'{path}@{k}' for k in range(1, n + 1)]}")
            if want is not None and n < want:
                raise FeatdynError(f"layer {spec!r}: the module is called only {n} time(s) per forward pass; "
                                   f"valid: {[f'{path}@{k}' for k in range(1, n + 1)]}")


def layer_shapes(arch: str, layers: Sequence[str], image_size: int, width: float = 1.0) -> dict[str, tuple[int, ...]]:
    """(C, H, W) of each layer of torchvision's ``arch`` (at channel ``width``) at ``image_size`` px,
    found by a forward pass on the meta device (no weights, no memory, milliseconds): the same checks
    as an extraction (unknown path, module called several times without ``@k``, ``@k`` beyond the
    calls), so that a layer list can be checked before any job runs."""
    from featdyn.nets.models import construct

    model = construct(arch, width, meta=True).eval()
    with torch.device("meta"):
        x = torch.empty(1, 3, image_size, image_size)
    with torch.no_grad(), LayerCapture(model, layers) as capture:
        return {spec: tuple(t.shape[1:]) for spec, t in capture.run(x).items()}
