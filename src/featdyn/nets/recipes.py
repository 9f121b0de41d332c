"""Fine-tuning recipes: which parameters train, at which learning rate, and BatchNorm in frozen parts.

A recipe is set by the options of the ``training`` block (config/README.md, "Recipes"):

- ``freeze``: module-path prefixes, or ``backbone`` (everything but the new head), whose parameters
  are not trained. Their BatchNorm layers stay in eval mode (running statistics unchanged), so a
  frozen part computes bit-identical features at every epoch, unless ``freeze_bn: false``.
- ``probe_epochs: m``: LP-FT. Epochs 1..m train the head alone (at the base lr, the backbone frozen
  as above), then every layer. The optimizer starts afresh at epoch m + 1, as at epoch 1: the
  fine-tuning stage is a new optimisation from the probe's weights (Kumar et al. 2022), and the
  probe's Adam moments cover the head only.
- ``layer_lr``: a multiplier of the lr per module-path prefix (the longest matching prefix wins;
  1 elsewhere), or ``{decay: g}``: block k counted from the output (the head's block is 0) trains
  at lr * g^k.
- ``lr_from``: multipliers from another model entry's measured per-layer distances
  (:func:`lr_from_scales`; docs/design.md, "Recipes").

Blocks (:func:`blocks`): the model's modules in registration order (forward order for torchvision
classifiers), expanding containers of type exactly ``nn.Sequential``, ``nn.ModuleList`` or
``nn.ModuleDict`` (not their subclasses, such as MobileNet's Conv2dNormActivation or DenseNet's
blocks); each other module holding parameters directly or below it is one block.

Without any option :func:`param_groups` returns None and the optimizer is built over
``model.parameters()`` exactly as before recipes existed: the same weights, bit for bit.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import asdict

from torch import nn

from featdyn import FeatdynError
from featdyn.nets.models import head_path
from featdyn.spec.hyperparams import TrainConfig, is_recipe, lr_from_block, probing

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _block(cfg: TrainConfig | dict) -> dict:
    return asdict(cfg) if isinstance(cfg, TrainConfig) else cfg


def under(name: str, prefix: str) -> bool:
    """Whether the parameter or module path ``name`` is ``prefix`` or lies below it."""
    return not prefix or name == prefix or name.startswith(prefix + ".")


def blocks(model: nn.Module) -> list[tuple[str, list[str]]]:
    """[(block path, [parameter names])] in registration order (see the module docstring)."""
    out: list[tuple[str, list[str]]] = []

    def visit(module: nn.Module, path: str) -> None:
        if type(module) in _CONTAINERS:
            for name, child in module.named_children():
                visit(child, f"{path}.{name}" if path else name)
            own = [f"{path}.{n}" if path else n for n, _ in module.named_parameters(recurse=False)]
            if own:
                out.append((path, own))
            return
        names = [f"{path}.{n}" if path else n for n, _ in module.named_parameters()]
        if names:
            out.append((path, names))

    if type(model) in _CONTAINERS:
        visit(model, "")
    else:
        for name, child in model.named_children():
            visit(child, name)
        own = [n for n, _ in model.named_parameters(recurse=False)]
        if own:
            out.append(("", own))
    return out


def check_prefixes(model: nn.Module, prefixes, key: str) -> None:
    """Every prefix names at least one parameter of ``model``; the error names the config key."""
    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(under(n, prefix) for n in names):
            tops = sorted({n.split(".")[0] for n in names})
            raise FeatdynError(f"{key}: {prefix!r} is no module path of this model holding parameters "
                               f"(its top-level modules: {tops})")


def frozen_names(model: nn.Module, cfg: TrainConfig | dict, epoch: int) -> set[str]:
    """Names of the parameters that epoch ``epoch`` does not train."""
    training = _block(cfg)
    names = [n for n, _ in model.named_parameters()]
    freeze = training.get("freeze")
    if probing(training, epoch) or freeze == "backbone":
        head = head_path(model)
        return {n for n in names if not under(n, head)}
    if not freeze:
        return set()
    check_prefixes(model, freeze, "training.freeze")
    return {n for n in names if any(under(n, p) for p in freeze)}


def check_layer_lr(layer_lr: dict) -> None:
    if "decay" in layer_lr:
        if len(layer_lr) > 1:
            raise FeatdynError(f"training.layer_lr: give either decay or multipliers per module path, not both "
                               f"(got {sorted(layer_lr)})")
        g = layer_lr["decay"]
        if not (isinstance(g, (int, float)) and 0 < g <= 1):
            raise FeatdynError(f"training.layer_lr.decay: expected a number in (0, 1], got {g!r}")


def lr_scales(model: nn.Module, cfg: TrainConfig | dict, epoch: int,
              distances: dict[str, float] | None = None) -> dict[str, float]:
    """{parameter name: lr multiplier} of epoch ``epoch``, frozen parameters included (their
    multiplier is never used)."""
    training = _block(cfg)
    names = [n for n, _ in model.named_parameters()]
    if probing(training, epoch):
        return dict.fromkeys(names, 1.0)
    layer_lr = training.get("layer_lr")
    if training.get("lr_from"):
        if distances is None:
            raise FeatdynError("training.lr_from: the reference run's distances were not given to this epoch")
        return lr_from_scales(model, distances, lr_from_block(training["lr_from"]))
    if not layer_lr:
        return dict.fromkeys(names, 1.0)
    check_layer_lr(layer_lr)
    if "decay" in layer_lr:
        out = {}
        bl = blocks(model)
        for k, (_, params) in enumerate(reversed(bl)):
            out.update(dict.fromkeys(params, float(layer_lr["decay"]) ** k))
        return {n: out[n] for n in names}
    check_prefixes(model, layer_lr, "training.layer_lr")
    out = {}
    for n in names:
        matching = [p for p in layer_lr if under(n, p)]
        out[n] = float(layer_lr[max(matching, key=len)]) if matching else 1.0
    return out


def layer_block(layer: str, bl: list[tuple[str, list[str]]]) -> int:
    """Index of the block that computes measured layer ``layer`` (``path@k`` counts as ``path``)."""
    path = layer.split("@")[0]
    for i, (block, _) in enumerate(bl):
        if under(path, block):
            return i
    inside = [i for i, (block, _) in enumerate(bl) if under(block, path)]
    if inside:
        return inside[-1]  # a layer that is a container: its last block computes it
    raise FeatdynError(f"training.lr_from: layer {layer!r} of the reference run is no module of this model")


def distance_scales(distances: list[float], power: float, floor: float) -> list[float]:
    """The mapping of lr_from: multiplier = max(floor, (d / max d) ** power), distances clipped at 0."""
    d = [max(float(v), 0.0) for v in distances]
    top = max(d) if d else 0.0
    if not (top > 0 and math.isfinite(top)):
        raise FeatdynError(f"training.lr_from: the reference distances {distances} have no positive maximum: "
                           f"the reference run did not move its features")
    return [max(floor, (v / top) ** power) for v in d]


def lr_from_scales(model: nn.Module, distances: dict[str, float], block: dict) -> dict[str, float]:
    """Per-parameter multipliers from the reference's per-layer ``distances`` ({layer: d}).

    The blocks up to and including the one that computes the first measured layer take that
    layer's multiplier, those after it up to the next measured layer the next one's, and so on;
    blocks after the deepest measured layer take its multiplier, except the head's, which trains
    at the base lr (it is new: no distance to a source exists for it).
    """
    bl = blocks(model)
    head = head_path(model)
    measured = sorted((layer_block(layer, bl), layer) for layer in distances)
    scale = dict(zip([layer for _, layer in measured],
                     distance_scales([distances[layer] for _, layer in measured], block["power"], block["floor"])))
    out: dict[str, float] = {}
    k = 0
    for i, (_, params) in enumerate(bl):
        while k < len(measured) - 1 and measured[k][0] < i:
            k += 1
        s = scale[measured[k][1]]
        for n in params:
            out[n] = 1.0 if under(n, head) else s
    return {n: out[n] for n, _ in model.named_parameters()}


def param_groups(model: nn.Module, cfg: TrainConfig | dict, epoch: int,
                 distances: dict[str, float] | None = None) -> list[dict] | None:
    """The optimizer's parameter groups of epoch ``epoch`` (>= 1), or None for full fine-tuning.

    Frozen parameters get ``requires_grad = False`` and no group (no moments, no weight decay); the
    others are grouped by multiplier, in parameter order, each group with its ``lr`` (base lr x
    multiplier), ``lr_scale`` and parameter ``names`` (kept in the optimizer's state: the rates can
    be read back from a resume state).
    """
    training = _block(cfg)
    if not is_recipe(training):
        return None
    frozen = frozen_names(model, training, epoch)
    scales = lr_scales(model, training, epoch, distances)
    groups: dict[float, dict] = {}
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
        if name in frozen:
            continue
        g = groups.setdefault(scales[name], {"params": [], "names": [], "lr": training["lr"] * scales[name],
                                              "lr_scale": scales[name]})
        g["params"].append(p)
        g["names"].append(name)
    if not groups:
        raise FeatdynError("training.freeze: every parameter is frozen; nothing would train")
    return list(groups.values())


def train_mode(model: nn.Module, cfg: TrainConfig | dict, epoch: int) -> None:
    """``model.train()``, then BatchNorm layers whose parameters are all frozen back in eval mode
    (their running statistics stay the source's), unless ``freeze_bn`` is false."""
    model.train()
    training = _block(cfg)
    if not is_recipe(training) or not training.get("freeze_bn", True):
        return
    frozen = frozen_names(model, training, epoch)
    if not frozen:
        return
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            own = [f"{name}.{n}" for n, _ in m.named_parameters()]
            if all(n in frozen for n in own):
                m.eval()


def describe(model: nn.Module, cfg: TrainConfig | dict, epoch: int,
             distances: dict[str, float] | None = None) -> dict | None:
    """What the checkpoint records of a recipe (None without one): per block its lr multiplier
    (0 where frozen; per parameter where a block is split), the frozen blocks, BatchNorm handling,
    and for lr_from the reference distances the multipliers come from."""
    training = _block(cfg)
    if not is_recipe(training) or epoch < 1:
        return None
    frozen = frozen_names(model, training, epoch)
    scales = {n: 0.0 if n in frozen else s for n, s in lr_scales(model, training, epoch, distances).items()}
    rates: dict[str, float] = {}
    for path, params in blocks(model):
        values = {scales[n] for n in params}
        if len(values) == 1:
            rates[path] = values.pop()
        else:
            rates.update({n: scales[n] for n in params})
    out = {"probe": probing(training, epoch), "lr": training["lr"], "lr_scale": rates,
           "frozen": [path for path, params in blocks(model) if all(n in frozen for n in params)],
           "freeze_bn": bool(training.get("freeze_bn", True))}
    if training.get("lr_from") and not probing(training, epoch):
        out["lr_from"] = lr_from_block(training["lr_from"]) | {"distances": dict(distances or {})}
    return out


def reference_distances(score_file: str | os.PathLike, metric: str, epoch: int | str) -> dict[str, float]:
    """{layer: distance} of one epoch (``last``: the file's last) of a score file
    (featdyn.spec.columns.SCORE_COLUMNS), in layer order."""
    with open(score_file, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise FeatdynError(f"training.lr_from: score file {score_file} holds no rows")
    metrics = {r["metric"] for r in rows}
    if metrics != {metric}:
        raise FeatdynError(f"training.lr_from: score file {score_file} holds metric(s) {sorted(metrics)}, "
                           f"expected {metric!r}")
    epochs = sorted({int(r["epoch"]) for r in rows})
    wanted = epochs[-1] if epoch == "last" else int(epoch)
    if wanted not in epochs:
        raise FeatdynError(f"training.lr_from.epoch: epoch {wanted} is not in {score_file} (epochs {epochs})")
    chosen = sorted((r for r in rows if int(r["epoch"]) == wanted), key=lambda r: int(r["layer_index"]))
    out = {r["layer"]: float(r["value"]) for r in chosen}
    bad = {k: v for k, v in out.items() if not math.isfinite(v)}
    if bad:
        raise FeatdynError(f"training.lr_from: distances in {score_file} are not finite: {bad}")
    return out
