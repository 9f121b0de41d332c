"""Recipes side by side: which model entries are recipes of one architecture, and the name of the
recipe a training block sets. A leaf module (torch- and pandas-free, imports nothing of featdyn):
the workflow reads it at every parse and the recipe table's script imports it, without tracking
the training code."""

from __future__ import annotations

from collections.abc import Mapping

FULL, PROBE, FROZEN, FREEZE, LPFT, DECAY, LAYER_LR, PROPORTIONAL = (
    "full", "linear probe", "frozen backbone", "freeze", "LP-FT", "layer-wise decay", "layer lr", "distance-proportional")


def recipe_label(training: Mapping) -> str:
    """A short name of the recipe a resolved training block sets (``full``: every layer, one lr)."""
    parts = []
    m = training.get("probe_epochs") or 0
    freeze = training.get("freeze")
    if m and m >= training.get("epochs", m + 1):
        parts.append(PROBE)
    elif m:
        parts.append(f"{LPFT} ({m} probe)")
    if freeze == "backbone":
        parts.append(PROBE if not m else FROZEN)
    elif freeze:
        parts.append(f"{FREEZE} {', '.join(freeze)}")
    layer_lr = training.get("layer_lr")
    if layer_lr and "decay" in layer_lr:
        parts.append(f"{DECAY} {layer_lr['decay']}")
    elif layer_lr:
        parts.append(LAYER_LR)
    if training.get("lr_from"):
        parts.append(f"{PROPORTIONAL} (from {training['lr_from']['model']})")
    return " + ".join(dict.fromkeys(parts)) or FULL


def recipe_groups(models: Mapping[str, Mapping]) -> dict[str, list[str]]:
    """{architecture label: [model entries]} for architectures with two or more entries (same arch
    and width), in config order. ``models``: the config's models block."""
    groups: dict[str, list[str]] = {}
    for name, spec in models.items():
        width = spec.get("width", 1.0)
        label = spec["arch"] if width == 1 else f"{spec['arch']} x{width:g}"
        groups.setdefault(label, []).append(name)
    return {k: v for k, v in groups.items() if len(v) >= 2}
