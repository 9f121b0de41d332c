"""Capture the chosen layers' feature maps for the probe set into a Zarr store, batch by batch.

The model runs in eval mode without gradients, in float32 (never bf16: the stored activations are
what the metrics compare). Memory is bounded by one batch: nothing accumulates across batches.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import numpy as np
import torch

from .datasets import ImageCache, file_sha256
from .layers import LayerCapture
from .progress import Progress
from .stores import StoreWriter
from .training import Normalizer, iterate_batches, load_checkpoint, model_from_checkpoint, pick_device

log = logging.getLogger("featdyn.extraction")


def extract(checkpoint: str | os.PathLike, cache: ImageCache, layers: Sequence[str], out: str | os.PathLike,
            *, batch_size: int = 32, dtype: str = "float32", codec: str = "zstd", level: int = 1,
            device: torch.device | None = None, attrs: dict | None = None) -> None:
    """Write the activations of ``layers`` for the probe images of ``cache`` to the store ``out``."""
    device = device or pick_device()
    ckpt = load_checkpoint(checkpoint, num_classes=cache.num_classes)
    model = model_from_checkpoint(ckpt).to(device).eval()
    cfg = ckpt.get("config", {})
    norm = Normalizer(cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225)),
                      channels_last=False).to(device)
    rows = cache.indices("probe")
    store_attrs = {"checkpoint_sha256": file_sha256(checkpoint), "probe_sha256": cache.probe_sha256(),
                   "image_size": int(cache.images.shape[1]), "epoch": int(ckpt["epoch"]),
                   "arch": ckpt["arch"], "classes": ckpt.get("classes"), **(attrs or {})}
    progress = Progress(log, "extract batch", math.ceil(len(rows) / batch_size))
    with torch.no_grad(), LayerCapture(model, layers) as capture, \
            StoreWriter(out, len(rows), layers, store_attrs, chunk=batch_size, dtype=dtype,
                        codec=codec, level=level) as writer:
        start = 0
        for step, (x, _y) in enumerate(iterate_batches(cache, rows, batch_size, device), start=1):
            feats = capture.run(norm(x))
            idx = rows[start:start + len(x)]
            writer.write(start, {k: v.float().cpu().numpy() for k, v in feats.items()},
                         labels=cache.labels[idx], index=idx.astype(np.int64))
            start += len(x)
            progress.update(step, len(x))
    log.info("wrote %s: %d images, layers %s", out, len(rows), list(layers))
