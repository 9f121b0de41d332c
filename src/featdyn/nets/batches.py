"""Batches for training and extraction, fed from the uint8 image cache.

Images are decoded once into the cache (:class:`featdyn.data.datasets.ImageCache`); here rows of it
are gathered by background threads a few batches ahead (into pinned memory on CUDA, copied on a side
stream so that the copy overlaps the previous step), and normalised on the device
(:class:`Normalizer`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from featdyn.data.prefetch import ordered_map

if TYPE_CHECKING:  # datasets needs pandas; feeding batches does not
    from featdyn.data.datasets import ImageCache


def loader_workers(threads: int, device: torch.device) -> int:
    """Background threads that gather batches, from the job's ``threads``: on CUDA the main thread
    only launches kernels, so the others gather (4 are plenty); on a CPU the cores compute."""
    return max(1, min(4, threads - 1)) if device.type == "cuda" else 1


class Normalizer(nn.Module):
    """uint8 NHWC batch on any device -> normalised float NCHW, done on the device."""

    def __init__(self, mean, std, channels_last: bool) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std).view(1, 3, 1, 1) * 255.0))
        self.channels_last = channels_last

    def forward(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = x_uint8.permute(0, 3, 1, 2).float()
        x = (x - self.mean) * self.inv_std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()


def _gather(images: np.ndarray, labels: np.ndarray, idx: np.ndarray, pin: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy rows ``idx`` of the memory-mapped cache into one (pinned) host batch.

    Rows are read in sorted order (sequential reads from the file), each written straight to its
    place in the batch: no intermediate copy.
    """
    x = torch.empty((len(idx),) + images.shape[1:], dtype=torch.uint8, pin_memory=pin)
    xn = x.numpy()
    for j in np.argsort(idx, kind="stable"):
        xn[j] = images[idx[j]]
    y = torch.from_numpy(labels[idx].astype(np.int64))
    return x, (y.pin_memory() if pin else y)


def iterate_batches(cache: ImageCache, rows: np.ndarray, batch_size: int, device: torch.device, *,
                    workers: int = 1, ahead: int = 3) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 NHWC images, int64 labels) on ``device`` for ``rows`` in the given order.

    ``workers`` threads gather up to ``ahead`` batches in advance. On CUDA the host batches are
    pinned and copied on a side stream one batch ahead, so that the copy runs while the GPU still
    computes the previous step.
    """
    cuda = device.type == "cuda"
    starts = range(0, len(rows), batch_size)
    host = ordered_map(lambda s: _gather(cache.images, cache.labels, rows[s:s + batch_size], cuda),
                       starts, workers=workers, ahead=ahead)
    if not cuda:
        yield from host
        return
    stream = torch.cuda.Stream(device)

    def upload(batch):
        with torch.cuda.stream(stream):
            xd, yd = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)
        return xd, yd, done

    pending = None
    try:
        for batch in host:
            nxt = upload(batch)
            if pending is not None:
                yield _ready(*pending)
            pending = nxt
        if pending is not None:
            yield _ready(*pending)
    finally:
        host.close()


def _ready(x: torch.Tensor, y: torch.Tensor, done) -> tuple[torch.Tensor, torch.Tensor]:
    """Make the compute stream wait for a side-stream copy, and tell the allocator that the
    tensors are now used there (their memory must not be reused before the compute is done)."""
    current = torch.cuda.current_stream(x.device)
    current.wait_event(done)
    x.record_stream(current)
    y.record_stream(current)
    return x, y
