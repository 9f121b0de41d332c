"""Ordered, bounded, parallel map on background threads (image decoding, batch gathering).

Threads suit this work: PIL decoding and numpy copies release the GIL, and nothing needs to be
pickled. At most ``ahead`` results are computed ahead of the consumer, so memory stays bounded; if
the consumer stops early (an error, a closed generator) the pending work is cancelled.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 1, ahead: int = 2) -> Iterator[R]:
    """Yield ``fn(item)`` for every item, in order, computed by ``workers`` threads at most
    ``ahead`` items ahead of the consumer (``ahead`` >= ``workers`` keeps every thread busy)."""
    workers = max(1, int(workers))
    ahead = max(workers, int(ahead))
    pending: deque[Future] = deque()
    it = iter(items)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="featdyn-prefetch")
    try:
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                break
        while pending:
            result = pending.popleft().result()
            for item in it:  # top the window up before handing the result over
                pending.append(pool.submit(fn, item))
                break
            yield result
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
