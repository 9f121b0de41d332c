"""The readings of a stored layer: what the statistics of a layer metric are computed on.

A map is read as it is stored. A token layer (stored as its patch grid, with its class token beside
it) is read as its patch grid ('patches', the default), its class token ('cls', one row per image)
or its mean patch token ('mean'), as a metric's ``tokens`` option asks. Statistics files keep the
patch grid under the layer's name and the other readings under '<layer>#<reading>'; distances to
the source, between replicates and against the permutation null read them alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from featdyn import FeatdynError
from featdyn.data.stores import ActivationStore
from featdyn.spec.layouts import TOKEN_READINGS, prefix_name

# key of a token layer's other readings in the statistics files: '<layer>#cls', '<layer>#mean'
READING_SEP = "#"


def readings(store: ActivationStore, tokens: Sequence[str] = ()) -> list[tuple[str, str, str]]:
    """(key, layer, reading) of every statistic kept for ``store``: each layer as stored (maps, and
    a token layer's patch grid: reading 'patches', key the layer), and for each token layer each
    of ``tokens`` ('cls', 'mean'; key '<layer>#<reading>')."""
    out = []
    for layer in store.layers:
        out.append((layer, layer, "patches"))
        if store.layout(layer)["layout"] == "NTC":
            out += [(f"{layer}{READING_SEP}{t}", layer, t) for t in tokens if t != "patches"]
    return out


def describe(layer: str, reading: str) -> str:
    """A layer as messages name it, with its token reading where it is not the patch grid."""
    return repr(layer) if reading == "patches" else f"{layer!r} (tokens: {reading})"


def _check_reading(store: ActivationStore, layer: str, reading: str) -> None:
    if reading not in TOKEN_READINGS:
        raise FeatdynError(f"unknown token reading {reading!r}; expected one of {list(TOKEN_READINGS)}")
    if reading == "cls" and not store.layout(layer).get("prefix"):
        raise FeatdynError(f"activation store {store.path}: layer {layer!r} has no class token (tokens: cls)")


def _as_reading(block: np.ndarray, reading: str) -> np.ndarray:
    """A stored block of a layer read as ``reading``: the maps as they are, or the mean patch token
    (float64) of a token layer's patch grid."""
    return block.astype(np.float64).mean(axis=(2, 3)) if reading == "mean" else block


def read_reading(store: ActivationStore, layer: str, reading: str, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a layer's ``reading`` (see :func:`reading_batches`), checksums verified."""
    _check_reading(store, layer, reading)
    if reading == "cls":
        return store.read(prefix_name(layer), start, stop)[:, :, 0]
    return _as_reading(store.read(layer, start, stop), reading)


def reading_batches(store: ActivationStore, layer: str, reading: str,
                    batch: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(start, block) of a layer's ``reading``: the stored maps ('patches'), the class token, one
    row per image ('cls', the first prefix token), or the mean patch token ('mean', float64)."""
    _check_reading(store, layer, reading)
    if reading == "cls":
        step = batch or store.array(layer).chunks[0]
        for start in range(0, store.n, step):
            yield start, read_reading(store, layer, reading, start, min(start + step, store.n))
        return
    for start, block in store.batches(layer, batch):
        yield start, _as_reading(block, reading)


def select_reading(stats: Mapping[str, object], reading: str) -> dict[str, object]:
    """The statistics a metric reading ``reading`` of token layers uses, keyed by layer: a token
    layer's '<layer>#<reading>' entry where there is one, every other layer as stored."""
    plain = [k for k in stats if READING_SEP not in k]
    if reading == "patches":
        return {k: stats[k] for k in plain}
    return {k: stats.get(f"{k}{READING_SEP}{reading}", stats[k]) for k in plain}
