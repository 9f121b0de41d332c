"""Fine-tuning, one epoch per call, with checkpoints that resume bit-identically.

Epoch 0 is the source model (pretrained backbone + new head), evaluated but not trained. Epoch e
loads epoch e-1's checkpoint (weights, optimizer state, RNG states), trains one pass over the
training split in an order drawn from (seed, e), evaluates, and saves epoch e. Because the data
order depends only on (seed, e) and every RNG state travels in the checkpoint, a chain of epoch
jobs gives the same weights as one uninterrupted loop.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from . import FeatdynError
from .atomic import atomic_path
from .datasets import ImageCache
from .models import build_model, build_source_model
from .progress import Progress

log = logging.getLogger("featdyn.training")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = 1


@dataclass
class TrainConfig:
    """Hyperparameters of one fine-tuning run (the ``training`` block of the config)."""

    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-4
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    grad_clip: float | None = 0.5
    eval_batch_size: int = 128
    bf16: bool | str = "auto"
    channels_last: bool | str = "auto"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "extra"}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known, extra={k: v for k, v in d.items() if k not in cls.__dataclass_fields__})


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _flag(value: bool | str, device: torch.device) -> bool:
    """Resolve an on/off/'auto' switch: 'auto' means on for CUDA, off on CPU."""
    return device.type == "cuda" if value == "auto" else bool(value)


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


def iterate_batches(cache: ImageCache, rows: np.ndarray, batch_size: int,
                    device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 NHWC images, int64 labels) on ``device`` for ``rows`` in the given order."""
    pin = device.type == "cuda"
    for start in range(0, len(rows), batch_size):
        idx = rows[start:start + batch_size]
        # Sorted reads from the memory map are faster; the batch order is restored afterwards.
        order = np.argsort(idx, kind="stable")
        images = np.empty((len(idx),) + cache.images.shape[1:], dtype=np.uint8)
        images[order] = cache.images[idx[order]]
        x = torch.from_numpy(images)
        y = torch.from_numpy(cache.labels[idx])
        if pin:
            x, y = x.pin_memory(), y.pin_memory()
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The training order of epoch ``epoch``: a permutation drawn from (seed, epoch) alone."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise FeatdynError(f"training.optimizer: unknown optimizer {cfg.optimizer!r}; expected 'adam' or 'sgd'")


@torch.no_grad()
def evaluate(model: nn.Module, norm: Normalizer, cache: ImageCache, split: str, cfg: TrainConfig,
             device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (%) of ``model`` on ``split``, in eval mode."""
    model.eval()
    rows = cache.indices(split)
    loss_sum, correct = 0.0, 0
    use_bf16 = _flag(cfg.bf16, device)
    for x, y in iterate_batches(cache, rows, cfg.eval_batch_size, device):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(norm(x))
        loss_sum += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    return loss_sum / max(len(rows), 1), 100.0 * correct / max(len(rows), 1)


def train_one_epoch(model: nn.Module, norm: Normalizer, optimizer: torch.optim.Optimizer, cache: ImageCache,
                    cfg: TrainConfig, epoch: int, device: torch.device) -> dict[str, float]:
    """One pass over the training split; returns the running train loss, accuracy and images/s."""
    model.train()
    rows = cache.indices("train")
    rows = rows[epoch_order(len(rows), cfg.seed, epoch)]
    n_batches = math.ceil(len(rows) / cfg.batch_size)
    progress = Progress(log, f"epoch {epoch} batch", n_batches)
    use_bf16 = _flag(cfg.bf16, device)
    loss_sum, correct, seen = 0.0, 0, 0
    for step, (x, y) in enumerate(iterate_batches(cache, rows, cfg.batch_size, device), start=1):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(norm(x))
            loss = nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        loss_sum += float(loss.detach()) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        progress.update(step, len(y), loss=loss_sum / seen, acc=100.0 * correct / seen)
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": 100.0 * correct / max(seen, 1),
            "images_per_s": seen / max(progress.elapsed, 1e-9)}


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    meta: dict) -> None:
    """Atomically save model, optimizer and RNG states plus ``meta`` (arch, num_classes, epoch...)."""
    payload = {"format": CHECKPOINT_FORMAT, **meta,
               "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "optimizer": optimizer.state_dict() if optimizer is not None else None,
               "rng": _rng_state()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike, arch: str | None = None, num_classes: int | None = None) -> dict:
    """Load a checkpoint and check that it belongs to ``arch`` with ``num_classes`` outputs."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise FeatdynError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise FeatdynError(f"{path} is not a featdyn checkpoint (format {CHECKPOINT_FORMAT})")
    if arch is not None and ckpt["arch"] != arch:
        raise FeatdynError(f"checkpoint {path} is of model {ckpt['arch']!r}, expected {arch!r}")
    if num_classes is not None and ckpt["num_classes"] != num_classes:
        raise FeatdynError(f"checkpoint {path} has {ckpt['num_classes']} classes, expected {num_classes}")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    model = build_model(ckpt["arch"], ckpt["num_classes"])
    model.load_state_dict(ckpt["model"], strict=True)
    return model


def run_epoch(epoch: int, arch: str, cache: ImageCache, cfg: TrainConfig, out: str | os.PathLike,
              *, weights_file: str | os.PathLike | None = None, previous: str | os.PathLike | None = None,
              device: torch.device | None = None) -> dict[str, float]:
    """Make checkpoint ``epoch`` at ``out``; return its metrics row.

    Epoch 0 builds the source model from ``weights_file``; epoch e > 0 resumes ``previous``.
    """
    device = device or pick_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    channels_last = _flag(cfg.channels_last, device)
    norm = Normalizer(cfg.mean, cfg.std, channels_last).to(device)
    meta = {"arch": arch, "num_classes": cache.num_classes, "epoch": epoch, "seed": cfg.seed,
            "classes": cache.classes}
    if epoch == 0:
        if weights_file is None:
            raise FeatdynError("epoch 0 needs the source weights file")
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        random.seed(cfg.seed)
        model = build_source_model(arch, weights_file, cache.num_classes, cfg.seed).to(device)
        optimizer = None
        row: dict[str, float] = {}
    else:
        if previous is None:
            raise FeatdynError(f"epoch {epoch} needs the checkpoint of epoch {epoch - 1}")
        ckpt = load_checkpoint(previous, arch, cache.num_classes)
        if ckpt["epoch"] != epoch - 1:
            raise FeatdynError(f"checkpoint {previous} is epoch {ckpt['epoch']}, expected {epoch - 1}")
        model = model_from_checkpoint(ckpt).to(device)
        optimizer = make_optimizer(model, cfg)
        if ckpt["optimizer"] is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt["rng"])
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        row = train_one_epoch(model, norm, optimizer, cache, cfg, epoch, device)
    if epoch == 0:
        # The source model's train accuracy (random head) needs its own pass; later epochs report the
        # running accuracy of their training pass.
        row["train_loss"], row["train_acc"] = evaluate(model, norm, cache, "train", cfg, device)
    row["test_loss"], row["test_acc"] = evaluate(model, norm, cache, "test", cfg, device)
    log.info("epoch %d: train loss %.4f acc %.2f%% | test loss %.4f acc %.2f%%", epoch,
             row["train_loss"], row["train_acc"], row["test_loss"], row["test_acc"])
    save_checkpoint(out, model, optimizer, meta | {"metrics": row, "config": asdict(cfg)})
    return {"epoch": epoch, **row}
