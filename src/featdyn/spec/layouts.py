"""Names of layer layouts and the config's ``layout`` override, without torch (the stores and the
parse-time checks read them; featdyn.nets.layouts decides the layouts from the model)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from featdyn import FeatdynError

LAYOUTS = ("NCHW", "NHWC", "NTC", "NC")
_OVERRIDE = re.compile(r"^(NCHW|NHWC|NC|NTC)(?::(\d+))?$")
# The array beside a token layer's patch grid that holds its prefix (class/register) tokens.
PREFIX_SUFFIX = "__prefix"
# What a metric reads of a token layer (metrics.<name>.tokens)
TOKEN_READINGS = ("patches", "cls", "mean")


def prefix_name(layer: str) -> str:
    return layer + PREFIX_SUFFIX


def parse_override(value: str, where: str) -> tuple[str, int]:
    """'NCHW' | 'NHWC' | 'NC' | 'NTC' | 'NTC:k' (k prefix tokens; 'NTC' means one) -> (layout, k)."""
    m = _OVERRIDE.match(str(value))
    if not m or (m.group(2) is not None and m.group(1) != "NTC"):
        raise FeatdynError(f"{where}: layout {value!r} is not one of NCHW, NHWC, NC, NTC or NTC:<prefix tokens>")
    return m.group(1), int(m.group(2)) if m.group(2) is not None else (1 if m.group(1) == "NTC" else 0)


def override_for(layout: str | Mapping | None, layer: str) -> str | None:
    """The config's ``layout`` entry for ``layer``: one value for every layer, or a mapping by layer."""
    if layout is None or isinstance(layout, str):
        return layout
    return layout.get(layer)


def prefix_arrays(layouts: Mapping[str, Mapping]) -> list[str]:
    """Names of the prefix-token arrays that a store with these layer ``layouts`` holds."""
    return [prefix_name(layer) for layer, rec in layouts.items() if rec.get("layout") == "NTC" and rec.get("prefix")]
