"""The statistics stage gives the same bits whatever the number of threads of its job (config/README.md,
"Threads"): the float64 statistics of a representation pair, streamed in the workflow's batches, and
every layer metric computed from them, under 1, 2 and 4 torch (and BLAS) threads. The training is
not covered: its results move with the thread count (measured in config/README.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featdyn.engine.linalg import torch_threads
from featdyn.engine.metrics import METRICS, from_stats
from featdyn.engine.stats import Accumulator, stream_pair

THREADS = (1, 2, 4)


def statistics(x: np.ndarray, y: np.ndarray, threads: int, batch: int):
    with torch_threads(threads):
        source = Accumulator("cpu")
        for i in range(0, len(x), batch):  # the store's batches
            source.update(x[i:i + batch])
        pair = stream_pair([(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)], source=source.side())
        values = {name: from_stats(name, pair) for name in METRICS}
    return pair, values


# batches of 3000 rows: one row part per block (the syrk of a whole block); of 5000: two parts
@pytest.mark.parametrize("c,batch", [(17, 3000), (96, 3000), (96, 5000)])
def test_statistics_and_metrics_are_bit_identical_across_thread_counts(c, batch):
    rng = np.random.default_rng(c)
    # 12,000 rows in batches; a batch goes in row parts of featdyn.engine.stats.TASK_ROWS (4096)
    x = np.maximum(rng.standard_normal((12000, c)), 0).astype(np.float32) * 3 + 1
    y = (x @ rng.standard_normal((c, c)).astype(np.float32) * 0.1 + x).astype(np.float32)
    runs = [statistics(x, y, t, batch) for t in THREADS]
    first, first_values = runs[0]
    for (pair, values), t in zip(runs[1:], THREADS[1:]):
        for a, b in ((pair.xy, first.xy), (pair.x.gram, first.x.gram), (pair.y.gram, first.y.gram),
                     (pair.x.sum, first.x.sum), (pair.y.sum, first.y.sum), (pair.y.shift, first.y.shift)):
            assert torch.equal(a, b), f"{t} threads against 1: statistics differ"
        assert values == first_values, (t, values, first_values)
