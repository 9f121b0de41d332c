"""The ``visualize`` block's defaults, without numpy or pandas.

The workflow fills them in at every parse, including each cluster job's before its own work;
:mod:`featdyn.report.units`, which chooses the units with numpy and pandas, re-exports them.
"""

from __future__ import annotations

from collections.abc import Mapping

DEFAULTS = {
    "epochs": "all",
    "rank_by": "auto",
    "patches": {"layers": [-2, -1], "filters": 2, "classes": 2},
    "heatmaps": {"layers": [0, 1], "filters": 2, "images": 2},
}


def with_defaults(block: Mapping | None) -> dict:
    """The ``visualize`` block with every default filled in."""
    block = dict(block or {})
    out = {k: block.get(k, v) for k, v in DEFAULTS.items() if not isinstance(v, dict)}
    for part in ("patches", "heatmaps"):
        out[part] = DEFAULTS[part] | dict(block.get(part) or {})
    return out
