"""Which axes of a captured tensor hold the features, decided from the model, never from a shape.

A layer's output is one of:

- ``NCHW``: a channels-first feature map (CNNs, ConvNeXt's blocks, the output of a ViT's patch
  projection);
- ``NHWC``: a channels-last feature map (Swin's stages, the inside of a ConvNeXt block between its
  two ``Permute`` modules);
- ``NTC``: a token sequence, ``prefix`` class/register tokens first, then the patch tokens of an
  h x w grid in row-major order (a ViT's encoder);
- ``NC``: one feature vector per image (after global pooling).

The layout is decided from the model (:func:`decide`), by rules that read its modules:

1. A Vision Transformer's encoder (torchvision ``VisionTransformer``: every module under
   ``encoder``; timm's: ``blocks`` and ``norm``) produces tokens: its class (and register) tokens,
   then (S / patch)^2 patch tokens. The tensor's shape must agree (T = k + h w), else the layer
   is refused. In other timm models, only the stage outputs that timm itself lists
   (``feature_info``) are decided, with timm's ``output_fmt`` (channels-last for its Swin).
2. Everywhere else the layout between modules changes only at a ``Permute`` module
   (torchvision's Swin: ``features.0.1`` to channels-last, ``permute`` back; ConvNeXt's CNBlock:
   ``block.1`` and ``block.6``): walking the modules in the order they are registered (which is
   their call order in every torchvision classifier), the layout of a module's output is the one
   after its last leaf module, starting from the channels-first input. Functional permutes inside
   a module's ``forward`` (window attention, channel shuffle) are undone before it returns.
3. What the rules cannot decide is refused, naming the layer and its shape: a 3-D output outside a
   ViT encoder, the inside of MaxViT's partition attention (windows x tokens x channels), a shape
   that contradicts the rule. A ``layout:`` entry of the model in the config settles it.

Stores hold one canonical layout (:func:`arrange`): maps channels-first (N, C, H, W), token layers
as their patch grid channels-first (N, C, h, w) plus their prefix tokens (N, C, k) beside them,
vectors (N, C). Every reader (statistics, per-filter tables, figures) then reads maps.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from featdyn import FeatdynError
from featdyn.nets.layers import LayerCapture, parse_layer
from featdyn.spec.layouts import PREFIX_SUFFIX, override_for, parse_override


def _is_timm(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.")


def _vit_tokens(model: nn.Module, path: str) -> tuple[int, int] | None:
    """(prefix tokens, patch size) when ``path`` lies in a torchvision ViT's encoder (or a timm
    ViT's blocks and final norm), else None."""
    from torchvision.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer) and (path == "encoder" or path.startswith("encoder.")):
        return 1, int(model.patch_size)
    if _is_timm(model) and type(model).__name__ == "VisionTransformer" and (
            path in ("blocks", "norm") or path.startswith("blocks.")):
        return int(model.num_prefix_tokens), int(model.patch_embed.patch_size[0])
    return None


def _timm_stage(model: nn.Module, path: str) -> str | None:
    """A timm model's stage output (a module its ``feature_info`` lists): timm's own ``output_fmt``
    (NHWC for its Swin, else NCHW); None for any other module (no rule: refused)."""
    stages = [f["module"] for f in getattr(model, "feature_info", [])]
    if path not in stages:
        return None
    return str(getattr(model, "output_fmt", "NCHW")).rpartition(".")[2]


def _opaque(model: nn.Module, path: str) -> str | None:
    """Why the layout of ``path`` cannot be decided by the rules, or None."""
    from torchvision.models.maxvit import PartitionAttentionLayer

    modules = dict(model.named_modules())
    parts = path.split(".")
    for i in range(1, len(parts)):
        if isinstance(modules.get(".".join(parts[:i])), PartitionAttentionLayer):
            return "inside MaxViT's partition attention the tensor is (windows, tokens, channels)"
    return None


def walk_layout(model: nn.Module, path: str) -> str:
    """'NCHW' or 'NHWC': the layout after the last leaf module of ``path``, following the
    ``Permute`` modules met in registration order from a channels-first input (rule 2)."""
    from torchvision.ops.misc import Permute

    state, at = "NCHW", None
    for name, module in model.named_modules():
        if next(module.children(), None) is None and isinstance(module, Permute):
            dims = list(module.dims)
            state = {(0, 2, 3, 1): "NHWC", (0, 3, 1, 2): "NCHW"}.get(tuple(dims), f"permuted {dims}")
        if name == path or path == "" or name.startswith(path + "."):
            at = state
    return at or state


def decide(model: nn.Module, spec: str, shape: Sequence[int], image_size: int,
           override: str | None = None) -> dict:
    """The layout record of layer ``spec`` whose output (without the batch axis) is ``shape``:
    {'layout', 'prefix', 'grid', 'captured', 'by'}; FeatdynError where it cannot be decided."""
    path, _ = parse_layer(spec)
    shape = tuple(int(s) for s in shape)
    record = {"captured": list(shape), "prefix": 0, "grid": None}

    def refuse(why: str) -> FeatdynError:
        return FeatdynError(f"layer {spec!r} (output shape {shape} per image): cannot decide which axis holds the "
                            f"features: {why}; say it with the model's `layout:` (NCHW, NHWC, NTC, NTC:<prefix "
                            f"tokens> or NC, for the model or per layer)")

    if override is not None:
        layout, prefix = parse_override(override, f"layout of layer {spec!r}")
        by = "config"
    else:
        by = "rule"
        vit = _vit_tokens(model, path)
        why = _opaque(model, path)
        if why:
            raise refuse(why)
        if len(shape) == 1:
            layout, prefix = "NC", 0
        elif vit is not None:
            layout, prefix = "NTC", vit[0]
        elif _is_timm(model):
            layout, prefix = _timm_stage(model, path), 0
            if layout is None:
                raise refuse("in a timm model only the stage outputs timm lists (feature_info: "
                             f"{[f['module'] for f in getattr(model, 'feature_info', [])]}) have a known layout")
        elif len(shape) == 3:
            layout, prefix = walk_layout(model, path), 0
            if layout not in ("NCHW", "NHWC"):
                raise refuse(f"the modules before it permute the axes to {layout}")
        else:
            raise refuse(f"a {len(shape) + 1}-D output outside a Vision Transformer's encoder")
    want = {"NCHW": 3, "NHWC": 3, "NTC": 2, "NC": 1}[layout]
    if len(shape) != want:
        raise refuse(f"layout {layout} needs a {want + 1}-D output")
    if layout == "NTC":
        patches = shape[0] - prefix
        side = round(patches ** 0.5) if patches > 0 else 0
        if side * side != patches or side == 0:
            raise refuse(f"{shape[0]} tokens minus {prefix} prefix token(s) is not a square grid of patches")
        if by == "rule":
            patch = _vit_tokens(model, path)[1]
            if image_size // patch != side:
                raise refuse(f"{patches} patch tokens, but a {image_size} px image in patches of {patch} px "
                             f"makes {(image_size // patch) ** 2}")
        record["grid"] = [side, side]
    elif layout in ("NCHW", "NHWC"):
        h, w = shape[1:] if layout == "NCHW" else shape[:2]
        if h > image_size or w > image_size:
            raise refuse(f"as {layout} its spatial size {h} x {w} exceeds the {image_size} px input")
        record["grid"] = [h, w]
    return record | {"layout": layout, "prefix": prefix, "by": by}


def stored_shapes(record: Mapping) -> dict[str, tuple[int, ...]]:
    """The per-image shapes of the arrays a layer of layout ``record`` is stored as: {'': main,
    PREFIX_SUFFIX: prefix tokens} (the latter for token layers with prefix tokens only)."""
    cap, layout = tuple(record["captured"]), record["layout"]
    if layout == "NCHW" or layout == "NC":
        return {"": cap}
    if layout == "NHWC":
        return {"": (cap[2], cap[0], cap[1])}
    h, w = record["grid"]
    out = {"": (cap[1], h, w)}
    if record["prefix"]:
        out[PREFIX_SUFFIX] = (cap[1], record["prefix"])
    return out


def arrange(t: torch.Tensor, record: Mapping) -> dict[str, torch.Tensor]:
    """A captured batch ``t`` in the canonical layout: {'': main array, PREFIX_SUFFIX: prefix tokens}."""
    layout = record["layout"]
    if tuple(t.shape[1:]) != tuple(record["captured"]):
        raise FeatdynError(f"captured shape {tuple(t.shape[1:])} differs from the one its layout was decided for "
                           f"{tuple(record['captured'])}")
    if layout in ("NCHW", "NC"):
        return {"": t}
    if layout == "NHWC":
        return {"": t.permute(0, 3, 1, 2)}
    k, (h, w) = record["prefix"], record["grid"]
    out = {"": t[:, k:, :].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)}
    if k:
        out[PREFIX_SUFFIX] = t[:, :k, :].permute(0, 2, 1)
    return out


@contextmanager
def refused_input(model: nn.Module, image_size: int) -> Iterator[None]:
    """Around a forward pass of ``image_size`` px images: a model that does not take them (a
    torchvision ViT takes exactly the size it was built for; a deep CNN's kernels outgrow a small
    map) fails with a FeatdynError naming the size, not with its own assertion in a later job. An
    operation the meta device lacks (NotImplementedError) is not the model's refusal: it passes."""
    try:
        yield
    except (FeatdynError, NotImplementedError):
        raise
    except Exception as exc:  # noqa: BLE001 - models refuse sizes with AssertionError, RuntimeError, ValueError
        raise FeatdynError(
            f"{type(model).__name__} does not run on image_size {image_size} ({image_size} x {image_size} px "
            f"images): {type(exc).__name__}: {str(exc).strip()[:300]}; set image_size to a size the model takes "
            f"(a torchvision ViT takes exactly the size it was built for, 224)") from None


def model_layouts(model: nn.Module, layers: Sequence[str], image_size: int,
                  layout: str | Mapping | None = None) -> dict[str, dict]:
    """The layout record of every layer of ``model`` (built on the meta device, a forward pass
    costs no memory), with the config's ``layout`` entry (one value or a mapping by layer)."""
    if isinstance(layout, Mapping):
        unknown = sorted(set(layout) - set(layers))
        if unknown:
            raise FeatdynError(f"layout: {unknown} are not layers of this model (its layers: {list(layers)})")
    x = torch.empty(1, 3, image_size, image_size, device=next(model.parameters()).device)
    with torch.no_grad(), LayerCapture(model, layers) as capture, refused_input(model, image_size):
        shapes = {spec: tuple(t.shape[1:]) for spec, t in capture.run(x).items()}
    out, problems = {}, []
    for spec in layers:
        try:
            out[spec] = decide(model, spec, shapes[spec], image_size, override_for(layout, spec))
        except FeatdynError as exc:
            problems.append(str(exc))
    if problems:
        raise FeatdynError("; ".join(problems))
    return out


def layer_layouts(arch: str, layers: Sequence[str], image_size: int, width: float = 1.0,
                  layout: str | Mapping | None = None) -> dict[str, dict]:
    """:func:`model_layouts` of torchvision's ``arch`` at ``width``, on the meta device."""
    from featdyn.nets.models import construct

    model = construct(arch, width, meta=True).eval()
    return model_layouts(model, layers, image_size, layout)
