"""Which feature maps are compared: layer presets and forward hooks that capture exactly them.

A layer is named by its module path (``features.3``, ``layer1.2``). A module that runs more than
once per forward pass (torchvision's Bottleneck calls its one ``relu`` three times) must say which
call with ``@k`` (1-based): ``layer1.0.relu@3`` is the ReLU after the residual addition. Without it
the capture is refused, because a plain hook would silently see the wrong tensor.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch
from torch import nn

from . import FeatdynError

# The paper's layers (ReLU outputs at the end of each major component); see DESIGN.md section 2.
PRESETS: dict[str, list[str]] = {
    "vgg19": ["features.3", "features.8", "features.17", "features.26", "features.35"],
    # The stem ReLU, then each stage's output after the residual addition (the Bottleneck's output
    # is its final ReLU applied to the sum).
    "resnet50": ["relu", "layer1.2", "layer2.3", "layer3.5", "layer4.2"],
    "densenet121": ["features.denseblock1.denselayer6.relu2", "features.transition1.relu",
                    "features.denseblock2.denselayer12.relu2", "features.transition2.relu",
                    "features.denseblock3.denselayer24.relu2", "features.transition3.relu",
                    "features.denseblock4.denselayer16.relu2"],
    # MobileNetV2: the stem ConvBNReLU6, three block outputs, the last ConvBNReLU6 (1280 channels).
    "mobilenet_v2": ["features.0", "features.3", "features.6", "features.13", "features.18"],
}


def preset(arch: str) -> list[str]:
    if arch not in PRESETS:
        raise FeatdynError(f"no layer preset for model {arch!r} (presets exist for {sorted(PRESETS)}); "
                           f"give `layers:` as a list of module paths")
    return list(PRESETS[arch])


def parse_layer(spec: str) -> tuple[str, int | None]:
    """'path' -> (path, None); 'path@k' -> (path, k) with k >= 1."""
    path, sep, call = spec.partition("@")
    if not sep:
        return path, None
    if not call.isdigit() or int(call) < 1:
        raise FeatdynError(f"layer {spec!r}: the part after '@' must be a call number >= 1")
    return path, int(call)


def resolve_modules(model: nn.Module, layers: Sequence[str]) -> dict[str, nn.Module]:
    """Map each layer spec to its module; unknown paths are an error listing the valid choices."""
    modules = dict(model.named_modules())
    out = {}
    for spec in layers:
        path, _ = parse_layer(spec)
        if path not in modules or path == "":
            close = difflib.get_close_matches(path, list(modules), n=8, cutoff=0.5)
            raise FeatdynError(f"layer {path!r} is not a module of {type(model).__name__}; "
                               f"close matches: {close or sorted(modules)[:20]}")
        out[spec] = modules[path]
    return out


class LayerCapture:
    """Forward hooks that keep the output of each requested layer (the right call of it).

    Use as a context manager around forward passes; ``captured`` maps each layer spec to the tensor
    of the last forward pass. Call counts are checked after every pass: a module called several
    times without ``@k``, or called fewer than k times, is an error naming the valid choices.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], detach: bool = True) -> None:
        self.model = model
        self.layers = list(layers)
        self.modules = resolve_modules(model, self.layers)
        self.detach = detach
        self.captured: dict[str, torch.Tensor] = {}
        self._calls: dict[str, int] = {}
        self._handles: list = []

    def _hook(self, spec: str):
        _, want = parse_layer(spec)

        def hook(_module, _inputs, output):
            self._calls[spec] = self._calls.get(spec, 0) + 1
            if want is None or self._calls[spec] == want:
                if not isinstance(output, torch.Tensor):
                    raise FeatdynError(f"layer {spec!r} returns {type(output).__name__}, not a tensor")
                self.captured[spec] = output.detach() if self.detach else output
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
        """One forward pass; return {layer spec: captured tensor}."""
        self._calls.clear()
        self.captured = {}
        self.model(x)
        self.check_calls()
        return dict(self.captured)

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
