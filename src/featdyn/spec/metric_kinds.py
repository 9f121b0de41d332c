"""Each metric kind's parameters and defaults, without torch.

The workflow fills in a metric's defaults at every parse (they become the score jobs' params);
:mod:`featdyn.engine.metrics`, which needs torch, takes its parameter defaults from here.
"""

from __future__ import annotations

from featdyn import FeatdynError

# kind -> its parameters with their defaults
KIND_PARAMS: dict[str, dict] = {"procrustes": {}, "pwsm": {"alpha": 0.0}, "cka": {}, "cca": {}}

# Kinds that also exist at filter granularity (featdyn.engine.filterwise)
FILTER_KINDS = ("procrustes", "cka")


def check_params(kind: str, params: dict) -> dict:
    """The kind's parameters with defaults filled in; an unknown kind or key is an error."""
    if kind not in KIND_PARAMS:
        raise FeatdynError(f"unknown metric {kind!r}; expected one of {sorted(KIND_PARAMS)}")
    defaults = KIND_PARAMS[kind]
    unknown = set(params) - set(defaults)
    if unknown:
        raise FeatdynError(f"metric {kind!r} takes parameters {sorted(defaults) or 'none'}, got {sorted(unknown)}")
    return defaults | params
