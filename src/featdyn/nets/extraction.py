"""Capture the chosen layers' feature maps for the probe set into a Zarr store, batch by batch.

The model runs in eval mode under ``torch.inference_mode`` (no gradients), in float32: never
bf16/fp16 autocast (the stored activations are what the metrics compare), and on CUDA without
TF32 unless asked for (TF32 convolutions round inputs to a 10-bit mantissa).

Memory is bounded by a few batches whatever the number of probe images: a batch's activations
go from the hooks (host float32 copies) through a bounded queue to a writer thread, which
compresses and stores them while the next batch is computed, then drops them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from featdyn.data.datasets import ImageCache
from featdyn.data.download import file_sha256
from featdyn.engine.linalg import pick_device
from featdyn.nets.batches import Normalizer, iterate_batches
from featdyn.nets.checkpoints import load_checkpoint, model_from_checkpoint
from featdyn.nets.layers import LayerCapture
from featdyn.nets.layouts import arrange, layer_layouts
from featdyn.progress import Progress
from featdyn.spec.hyperparams import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from featdyn.data.stores import StoreWriter

log = logging.getLogger("featdyn.nets.extraction")


@contextlib.contextmanager
def float32_precision(device: torch.device, tf32: bool = False) -> Iterator[None]:
    """On CUDA, run convolutions and matmuls in IEEE float32 (``tf32=False``) or allow TF32; the
    previous setting is restored afterwards. Nothing to do on CPU."""
    if device.type != "cuda":
        yield
        return
    conv, mm = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    if hasattr(conv, "fp32_precision"):  # torch >= 2.9
        old = (conv.fp32_precision, mm.fp32_precision)
        conv.fp32_precision = mm.fp32_precision = "tf32" if tf32 else "ieee"
        try:
            yield
        finally:
            conv.fp32_precision, mm.fp32_precision = old
    else:
        old = (torch.backends.cudnn.allow_tf32, mm.allow_tf32)
        torch.backends.cudnn.allow_tf32 = mm.allow_tf32 = tf32
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, mm.allow_tf32 = old


def load_model(checkpoint: str | os.PathLike, cache: ImageCache,
               device: torch.device) -> tuple[nn.Module, Normalizer, dict]:
    """The checkpoint's model on ``device`` in eval mode, its input normaliser, and the checkpoint."""
    ckpt = load_checkpoint(checkpoint, num_classes=cache.num_classes)
    model = model_from_checkpoint(ckpt).to(device).eval()
    cfg = ckpt.get("config") or {}
    norm = Normalizer(cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD), channels_last=False).to(device)
    return model, norm, ckpt


@dataclass
class Batch:
    """One batch of captured activations: host float32 tensors of probe rows [start, start + len)."""

    start: int
    rows: np.ndarray
    feats: dict[str, torch.Tensor]
    ready: torch.cuda.Event | None

    def numpy(self) -> dict[str, np.ndarray]:
        """The activations as arrays, once their device-to-host copies have landed."""
        if self.ready is not None:
            self.ready.synchronize()
        return {k: v.numpy() for k, v in self.feats.items()}


def capture_batches(model: nn.Module, norm: nn.Module, cache: ImageCache, rows: np.ndarray,
                    layers: Sequence[str], batch_size: int, device: torch.device,
                    layouts: Mapping[str, Mapping] | None = None) -> Iterator[Batch]:
    """Forward passes over ``rows`` of the cache, ``batch_size`` images at a time, yielding the
    captured layers of each batch (eval mode, no gradients, float32), each in its canonical layout
    when ``layouts`` (featdyn.nets.layouts) are given: channels-first maps, a token layer's patch
    grid plus its prefix tokens (``<layer>__prefix``)."""
    model.eval()
    transform = None if layouts is None else (lambda spec, t: arrange(t, layouts[spec]))
    with LayerCapture(model, layers, host=True, transform=transform) as capture:
        start = 0
        for x, _y in iterate_batches(cache, rows, batch_size, device):
            with torch.inference_mode():
                feats = capture.run(norm(x))
            yield Batch(start, rows[start:start + len(x)], feats, capture.ready)
            start += len(x)


class BackgroundWriter:
    """Store batches on a thread while the caller computes the next ones.

    The queue holds at most ``depth`` batches, so memory stays bounded when storage is slower
    than compute (the producer then waits). A failure in the thread is raised in the caller at its
    next :meth:`put` or at exit; after a failure, or when the caller fails, queued batches are
    dropped rather than written.
    """

    def __init__(self, writer: StoreWriter, labels: np.ndarray, depth: int = 2,
                 progress: Progress | None = None) -> None:
        self.writer, self.labels, self.progress = writer, labels, progress
        self._queue: queue.Queue[Batch | None] = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._cancel = False
        self._thread = threading.Thread(target=self._loop, name="store-writer", daemon=True)
        self._steps = 0

    def _loop(self) -> None:
        while (batch := self._queue.get()) is not None:
            if self._error is not None or self._cancel:
                continue  # keep draining so that put() never blocks on a dead consumer
            try:
                self.writer.write(batch.start, batch.numpy(), labels=self.labels[batch.rows],
                                  index=batch.rows.astype(np.int64))
                self._steps += 1
                if self.progress is not None:
                    self.progress.update(self._steps, len(batch.rows))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = exc

    def put(self, batch: Batch) -> None:
        self._check()
        self._queue.put(batch)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def __enter__(self) -> BackgroundWriter:
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._cancel = exc_type is not None
        self._queue.put(None)
        self._thread.join()
        if exc_type is None:
            self._check()


def extract(checkpoint: str | os.PathLike, cache: ImageCache, layers: Sequence[str], out: str | os.PathLike,
            *, batch_size: int = 32, dtype: str = "float32", codec: str = "zstd", level: int = 1,
            device: torch.device | None = None, attrs: dict | None = None, queue_depth: int = 2,
            tf32: bool = False, layout: str | Mapping | None = None) -> dict[str, float]:
    """Write the activations of ``layers`` for the probe images of ``cache`` to the store ``out``,
    each in its canonical layout (decided from the model, or by ``layout``, the config's override:
    featdyn.nets.layouts), recorded in the store's ``layouts`` attribute.

    Returns {'n', 'seconds', 'images_per_s'} of the capture-and-store loop (store creation to rename).
    """
    from featdyn.data.stores import StoreWriter  # zarr is needed to write, not to capture (GPU benchmarks without it)

    device = device or pick_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model, norm, ckpt = load_model(checkpoint, cache, device)
    rows = cache.indices("probe")
    image_size = int(cache.images.shape[1])
    layouts = layer_layouts(ckpt["arch"], layers, image_size, ckpt.get("width", 1.0), layout)
    store_attrs = {"layouts": layouts, "checkpoint_sha256": file_sha256(checkpoint),
                   "probe_sha256": cache.probe_sha256(), "image_size": image_size, "epoch": int(ckpt["epoch"]),
                   "arch": ckpt["arch"], "classes": ckpt.get("classes"), "device": device.type,
                   "tf32": bool(tf32 and device.type == "cuda"), **(attrs or {})}
    progress = Progress(log, "extract batch", math.ceil(len(rows) / batch_size))
    t0 = time.perf_counter()
    with float32_precision(device, tf32), \
            StoreWriter(out, len(rows), layers, store_attrs, chunk=batch_size, dtype=dtype, codec=codec,
                        level=level) as writer, \
            BackgroundWriter(writer, cache.labels, queue_depth, progress) as background:
        for batch in capture_batches(model, norm, cache, rows, layers, batch_size, device, layouts):
            background.put(batch)
    seconds = time.perf_counter() - t0
    log.info("wrote %s: %d images, layers %s, %.1f img/s", out, len(rows), list(layers), len(rows) / seconds)
    return {"n": len(rows), "seconds": seconds, "images_per_s": len(rows) / seconds}
