"""``layers: auto``: the layers of any model, chosen from its structure on the meta device.

- A Vision Transformer (tokens): evenly spaced encoder blocks (the last block of every quarter of
  the encoder) and the encoder's final norm.
- A timm model: its stage outputs as timm lists them (``feature_info``); a timm ViT as above.
- Any other model: its trunk units, i.e. the model's children with every container expanded whose
  own children are not all leaves (``features`` -> stages -> blocks; a Conv-BN-ReLU stays one
  unit), run once on the meta device. Taken: the last unit before each spatial downsampling, and
  the last feature map (the last 4-D unit before global pooling). A unit that only permutes axes,
  pools globally, flattens or classifies is never taken; nor one whose layout no rule decides.

The result depends on the architecture, its width and the image size only; it is written to the
run (featdyn.spec.auto_layers) at parse time, so jobs read it without torch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from featdyn import FeatdynError
from featdyn.nets.layouts import decide, refused_input

# units never taken: global pooling, flattening, the classifier, pure layout changes, dropout
_SKIP = (nn.Flatten, nn.Linear, nn.Dropout, nn.Identity)
_GLOBAL = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_POOL = (nn.MaxPool2d, nn.AvgPool2d)


def _expand(module: nn.Module, depth: int) -> bool:
    """A container of blocks (or the model's own top-level Sequential, VGG's ``features``)."""
    children = list(module.children())
    return isinstance(module, (nn.Sequential, nn.ModuleList)) and (
        depth == 1 or any(next(c.children(), None) is not None for c in children))


def trunk_units(model: nn.Module) -> Iterator[str]:
    """Module paths of the trunk units, in registration order (see the module docstring)."""
    def walk(prefix: str, module: nn.Module, depth: int) -> Iterator[str]:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if _expand(child, depth):
                yield from walk(path + ".", child, depth + 1)
            else:
                yield path
    yield from walk("", model, 1)


def _vit_layers(model: nn.Module) -> list[str]:
    n = len(model.encoder.layers)
    picks = sorted({max(0, round((q + 1) * n / 4) - 1) for q in range(4)})
    return [f"encoder.layers.encoder_layer_{i}" for i in picks] + ["encoder.ln"]


def auto_layers(model: nn.Module, image_size: int) -> list[str]:
    """The layers ``layers: auto`` takes for ``model`` at ``image_size`` px (meta device)."""
    from torchvision.models.vision_transformer import VisionTransformer
    from torchvision.ops.misc import Permute

    if isinstance(model, VisionTransformer):
        return _vit_layers(model)
    if type(model).__module__.startswith("timm."):
        # timm's ViT: the last block of every quarter and the final norm; else the stages timm lists
        if type(model).__name__ == "VisionTransformer":
            n = len(model.blocks)
            return [f"blocks.{i}" for i in sorted({max(0, round((q + 1) * n / 4) - 1) for q in range(4)})] + ["norm"]
        return [f["module"] for f in model.feature_info]
    from featdyn.nets.models import head_path

    modules = dict(model.named_modules())
    units = list(trunk_units(model))
    head = head_path(model)
    order: list[tuple[str, tuple[int, ...]]] = []
    calls: dict[str, int] = {}

    def hook(path):
        def fn(_m, _i, out):
            calls[path] = calls.get(path, 0) + 1
            if isinstance(out, torch.Tensor):
                order.append((path, tuple(out.shape[1:])))
        return fn

    handles = [modules[u].register_forward_hook(hook(u)) for u in units]
    try:
        x = torch.empty(1, 3, image_size, image_size, device=next(model.parameters()).device)
        with torch.no_grad(), refused_input(model, image_size):
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    maps: list[tuple[str, tuple[int, int]]] = []
    for path, shape in order:
        module = modules[path]
        # the features end at the global pooling or the classification head
        if isinstance(module, _GLOBAL) or path == head or head.startswith(path + "."):
            break
        if calls[path] != 1 or len(shape) != 3 or isinstance(module, (*_SKIP, Permute)):
            continue
        try:
            rec = decide(model, path, shape, image_size)
        except FeatdynError:
            continue
        maps.append((path, tuple(rec["grid"]), isinstance(module, _POOL)))
    if not maps:
        raise FeatdynError(f"layers: auto found no feature maps in {type(model).__name__}; give a list of module paths")
    # the last unit before each downsampling (a pooling unit is the downsampling, never taken)
    chosen = [p for (p, g, pool), (_, nxt, _) in zip(maps, maps[1:]) if not pool and (nxt[0] < g[0] or nxt[1] < g[1])]
    last = [p for p, _, pool in maps if not pool][-1:]
    return chosen + [p for p in last if p not in chosen]


def arch_auto_layers(arch: str, image_size: int, width: float = 1.0) -> list[str]:
    from featdyn.nets.models import construct

    return auto_layers(construct(arch, width, meta=True), image_size)
