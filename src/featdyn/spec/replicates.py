"""Training replicates: k fine-tuning chains per (model, dataset) that differ only in their seed.

Torch-free (resolved at every parse). Replicate 0 is today's chain: its seed is the training
block's ``seed`` and its files keep their paths, so ``replicates: 1`` gives exactly the numbers and
files of a run without replicates. Replicate r >= 1 draws the new head's initialisation and the
data order of every epoch from a seed derived from (seed, r), and its files live under a ``rep<r>``
folder beside replicate 0's (``results/checkpoints/<model>/<dataset>/rep<r>/epoch_<e>.pt``). Source
weights, split, probe set and optimisation settings are shared by every replicate.
"""

from __future__ import annotations

import hashlib

from featdyn import FeatdynError

# The {rep} wildcard of the workflow's paths: '' for replicate 0, '/rep<r>' for r >= 1.
REP_PATTERN = r"(/rep[1-9][0-9]*)?"


def replicates_of(config: dict, model: str, dataset: str) -> int:
    """k for one (model, dataset): the dataset's ``replicates`` < the model's < the global one
    (the most specific wins, as for ``training``)."""
    k = config.get("replicates", 1)
    for block in (config["models"][model], config["datasets"][dataset]):
        k = block.get("replicates", k)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise FeatdynError(f"replicates: expected an integer >= 1 for {model} x {dataset}, got {k!r}")
    return k


def replicate_seed(seed: int, replicate: int) -> int:
    """The training seed of replicate ``replicate``: ``seed`` itself for replicate 0, else a seed
    derived from (seed, replicate) by sha256 (independent of every other replicate's)."""
    if replicate == 0:
        return int(seed)
    digest = hashlib.sha256(f"featdyn-replicate/{int(seed)}/{int(replicate)}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def rep_suffix(replicate: int) -> str:
    """The {rep} wildcard value of a replicate: '' (replicate 0) or '/rep<r>'."""
    return "" if int(replicate) == 0 else f"/rep{int(replicate)}"


def rep_index(suffix: str) -> int:
    """The replicate of a {rep} wildcard value ('' -> 0, '/rep3' -> 3)."""
    if not suffix:
        return 0
    if not suffix.startswith("/rep") or not suffix[4:].isdigit():
        raise FeatdynError(f"not a replicate path component: {suffix!r} (expected '' or '/rep<r>')")
    return int(suffix[4:])


def replicate_pairs(k: int) -> list[tuple[int, int]]:
    """Every pair (a, b), a < b, of k replicates: the comparisons behind the noise floor."""
    return [(a, b) for a in range(k) for b in range(a + 1, k)]
