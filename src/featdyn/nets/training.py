"""Fine-tuning, one epoch per call, with checkpoints that resume bit-identically.

Epoch 0 is the source model (pretrained backbone + new head), evaluated but not trained. Epoch e
loads epoch e-1's checkpoint, seeds every RNG (torch, numpy, Python: dropout) from (seed, e), trains
one pass over the training split in an order drawn from (seed, e), evaluates, and saves epoch e.
Because an epoch's randomness depends only on (seed, e), a chain of epoch jobs gives the same
weights as one uninterrupted loop (:func:`fine_tune`).

An epoch is saved as a checkpoint and a resume state (:mod:`featdyn.nets.checkpoints`). Epoch 1
starts a fresh optimizer: it needs epoch 0's weights only, so a new learning rate retrains from
epoch 1 without recomputing the source model.

Speed: batches come from the uint8 cache through :mod:`featdyn.nets.batches`. On CUDA: bf16 autocast, channels-last, cuDNN
autotuning and fused Adam; losses and accuracies are summed on the device, so a step never waits
for the GPU except when a progress line is due.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from featdyn import FeatdynError
from featdyn.engine.linalg import pick_device
from featdyn.nets import recipes
from featdyn.nets.batches import Normalizer, iterate_batches, loader_workers
from featdyn.nets.checkpoints import (
    check_weights,
    load_checkpoint,
    load_resume_state,
    model_from_checkpoint,
    resume_path,
    save_checkpoint,
)
from featdyn.nets.models import build_source_model
from featdyn.progress import Progress
from featdyn.spec.hyperparams import TrainConfig, epoch_params, fresh_optimizer

if TYPE_CHECKING:  # datasets needs pandas; the training loop itself does not
    from featdyn.data.datasets import ImageCache

log = logging.getLogger("featdyn.nets.training")


def _flag(value: bool | str, device: torch.device) -> bool:
    """Resolve an on/off/'auto' switch: 'auto' means on for CUDA, off on CPU."""
    return device.type == "cuda" if value == "auto" else bool(value)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The training order of epoch ``epoch``: a permutation drawn from (seed, epoch) alone."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device | None = None,
                   groups: list[dict] | None = None) -> torch.optim.Optimizer:
    """Adam or SGD over every parameter (full fine-tuning), or over a recipe's parameter ``groups``
    (:func:`featdyn.nets.recipes.param_groups`); fused Adam kernels on CUDA."""
    params = model.parameters() if groups is None else groups
    if cfg.optimizer == "adam":
        fused = device is not None and device.type == "cuda"
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                **({"fused": True} if fused else {}))
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise FeatdynError(f"training.optimizer: unknown optimizer {cfg.optimizer!r}; expected 'adam' or 'sgd'")


def _logits(out) -> torch.Tensor:
    """The main logits of a forward pass (Inception/GoogLeNet return auxiliary outputs in training)."""
    return out if isinstance(out, torch.Tensor) else out[0]


def _due(progress: Progress, step: int) -> bool:
    """Whether ``progress`` will print at ``step``: only then are device sums read back."""
    return step == progress.total or time.perf_counter() - progress.last >= progress.every_s


@torch.no_grad()
def evaluate(model: nn.Module, norm: Normalizer, cache: ImageCache, split: str, cfg: TrainConfig,
             device: torch.device, workers: int = 1) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (%) of ``model`` on ``split``, in eval mode."""
    model.eval()
    rows = cache.indices(split)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    use_bf16 = _flag(cfg.bf16, device)
    for x, y in iterate_batches(cache, rows, cfg.eval_batch_size, device, workers=workers):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = _logits(model(norm(x)))
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
    n = max(len(rows), 1)
    return float(loss_sum) / n, 100.0 * int(correct) / n


def train_one_epoch(model: nn.Module, norm: Normalizer, optimizer: torch.optim.Optimizer, cache: ImageCache,
                    cfg: TrainConfig, epoch: int, device: torch.device, workers: int = 1) -> dict[str, float]:
    """One pass over the training split; returns the running train loss, accuracy and images/s."""
    recipes.train_mode(model, cfg, epoch)  # model.train(), frozen BatchNorm kept in eval mode
    rows = cache.indices("train")
    rows = rows[epoch_order(len(rows), cfg.seed, epoch)]
    n_batches = math.ceil(len(rows) / cfg.batch_size)
    progress = Progress(log, f"epoch {epoch} batch", n_batches)
    use_bf16 = _flag(cfg.bf16, device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    # The first batch whose loss is NaN or inf (0: none yet), recorded on the device: on CUDA it is
    # read only where the loop synchronises anyway (a progress line, the end), on a CPU every step.
    first_bad = torch.zeros((), dtype=torch.int64, device=device)
    seen = pending = 0
    for step, (x, y) in enumerate(iterate_batches(cache, rows, cfg.batch_size, device, workers=workers), start=1):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = _logits(model(norm(x)))
            loss = nn.functional.cross_entropy(logits.float(), y)
        first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss.detach()), step, first_bad)
        if device.type != "cuda":
            _check_loss(first_bad, epoch, n_batches, loss)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        loss_sum += loss.detach().double() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        pending += len(y)
        if _due(progress, step):
            _check_loss(first_bad, epoch, n_batches)
            progress.update(step, pending, loss=float(loss_sum) / seen, acc=100.0 * int(correct) / seen)
            pending = 0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    _check_loss(first_bad, epoch, n_batches)
    elapsed = progress.elapsed
    return {"train_loss": float(loss_sum) / max(seen, 1), "train_acc": 100.0 * int(correct) / max(seen, 1),
            "images_per_s": seen / max(elapsed, 1e-9)}


def _check_loss(first_bad: torch.Tensor, epoch: int, n_batches: int, loss: torch.Tensor | None = None) -> None:
    """Stop at a non-finite training loss, naming the epoch and the batch: the weights are about to
    be (or already are) NaN, and every later number would be meaningless."""
    bad = int(first_bad)
    if bad:
        value = f" (loss {float(loss.detach())})" if loss is not None else ""
        raise FeatdynError(f"epoch {epoch}: the training loss is not finite at batch {bad} of {n_batches}{value}; "
                           f"nothing was saved. The model diverged (try a lower training.lr, or training.grad_clip) "
                           f"or its checkpoint holds NaN weights")


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)  # also every CUDA device
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _seed_epoch(seed: int, epoch: int) -> None:
    """Seed every RNG for training epoch ``epoch`` from (seed, epoch) alone: no RNG state has to
    travel from one epoch job to the next."""
    _seed_everything(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))


def _place(model: nn.Module, device: torch.device, cfg: TrainConfig) -> nn.Module:
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if _flag(cfg.channels_last, device) else model


def configure_backends(device: torch.device) -> None:
    """Process-wide speed settings: on CUDA, inputs have fixed sizes, so let cuDNN time and pick
    the fastest convolution kernels once."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def _setup(device: torch.device | None, cfg: TrainConfig) -> tuple[torch.device, Normalizer]:
    device = device or pick_device()
    configure_backends(device)
    return device, Normalizer(cfg.mean, cfg.std, _flag(cfg.channels_last, device)).to(device)


def _source_model(arch: str, weights_file: str | os.PathLike | None, cache: ImageCache, cfg: TrainConfig,
                  width: float) -> nn.Module:
    if weights_file is None:
        raise FeatdynError("epoch 0 needs the source weights file")
    _seed_everything(cfg.seed)
    model = build_source_model(arch, weights_file, cache.num_classes, cfg.seed, width)
    check_weights(model.state_dict(), f"source weights file {weights_file}")
    return model


def _epoch(epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer | None, norm: Normalizer,
           cache: ImageCache, cfg: TrainConfig, device: torch.device, workers: int) -> dict[str, float]:
    """Train (epoch >= 1) and evaluate; the metrics row with timings."""
    t0 = time.perf_counter()
    if epoch == 0:
        # The source model's train accuracy (random head) needs its own pass; later epochs report the
        # running accuracy of their training pass, as the authors' code did.
        row: dict[str, float] = {}
        row["train_loss"], row["train_acc"] = evaluate(model, norm, cache, "train", cfg, device, workers)
    else:
        _seed_epoch(cfg.seed, epoch)
        row = train_one_epoch(model, norm, optimizer, cache, cfg, epoch, device, workers)
    t1 = time.perf_counter()
    row["test_loss"], row["test_acc"] = evaluate(model, norm, cache, "test", cfg, device, workers)
    for key in ("train_loss", "test_loss"):
        if not math.isfinite(row[key]):
            raise FeatdynError(f"epoch {epoch}: the {key.replace('_', ' ')} is {row[key]} (the model's outputs are "
                               f"not finite); nothing was saved")
    row |= {"train_s": t1 - t0, "eval_s": time.perf_counter() - t1}
    log.info("epoch %d: train loss %.4f acc %.2f%% | test loss %.4f acc %.2f%% | %.1f s train, %.1f s test",
             epoch, row["train_loss"], row["train_acc"], row["test_loss"], row["test_acc"],
             row["train_s"], row["eval_s"])
    return row


def resume(previous: str | os.PathLike, epoch: int, arch: str, num_classes: int, cfg: TrainConfig,
           device: torch.device, width: float = 1.0,
           previous_state: str | os.PathLike | None = None,
           distances: dict[str, float] | None = None) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Model and optimizer of checkpoint ``previous`` (epoch ``epoch - 1``) on ``device``: where epoch
    ``epoch`` starts. From epoch 2 on the optimizer state comes from ``previous_state`` (default:
    :func:`resume_path`); epoch 1 (and the first epoch after LP-FT's probe phase) starts a fresh
    optimizer, as the uninterrupted loop does. ``distances``: the reference's, for ``lr_from``."""
    ckpt = load_checkpoint(previous, arch, num_classes, width)
    if ckpt["epoch"] != epoch - 1:
        raise FeatdynError(f"checkpoint {previous} is epoch {ckpt['epoch']}, expected {epoch - 1}")
    if ckpt["seed"] != cfg.seed:
        raise FeatdynError(f"checkpoint {previous} was trained with seed {ckpt['seed']}, the config says "
                           f"{cfg.seed}: the data order would change mid-run; rerun from epoch 0")
    fresh = fresh_optimizer(asdict(cfg), epoch)
    state = None if fresh else load_resume_state(previous_state or resume_path(previous), epoch - 1, cfg.seed)
    model = _place(model_from_checkpoint(ckpt), device, cfg)
    optimizer = make_optimizer(model, cfg, device, recipes.param_groups(model, cfg, epoch, distances))
    if state is not None:
        if state["optimizer"] is None:
            raise FeatdynError(f"resume state of {previous} holds no optimizer state (epoch {epoch - 1})")
        optimizer.load_state_dict(state["optimizer"])
    return model, optimizer


def run_epoch(epoch: int, arch: str, cache: ImageCache, cfg: TrainConfig, out: str | os.PathLike,
              *, weights_file: str | os.PathLike | None = None, previous: str | os.PathLike | None = None,
              device: torch.device | None = None, width: float = 1.0, threads: int | None = None,
              state_out: str | os.PathLike | None = None,
              previous_state: str | os.PathLike | None = None,
              distances: dict[str, float] | None = None) -> dict[str, float]:
    """Make checkpoint ``epoch`` at ``out`` and its resume state at ``state_out`` (default:
    :func:`resume_path`); return its metrics row (with timings in seconds).

    Epoch 0 builds the source model from ``weights_file``; epoch e > 0 resumes ``previous`` (and,
    from epoch 2, its state ``previous_state``). ``threads`` (default: torch's intra-op threads) sizes the
    batch-gathering threads. The checkpoint records the settings it depends on
    (:func:`featdyn.spec.hyperparams.epoch_params`), not the whole block: a later ``epochs`` or learning
    rate does not make an earlier checkpoint wrong. A recipe (:mod:`featdyn.nets.recipes`) adds
    what it trained and at which rates under ``recipe``; ``distances`` are the reference's per-layer
    distances of ``lr_from``.
    """
    t0 = time.perf_counter()
    device, norm = _setup(device, cfg)
    workers = loader_workers(threads or torch.get_num_threads(), device)
    if epoch == 0:
        model = _place(_source_model(arch, weights_file, cache, cfg, width), device, cfg)
        optimizer = None
    else:
        if previous is None:
            raise FeatdynError(f"epoch {epoch} needs the checkpoint of epoch {epoch - 1}")
        model, optimizer = resume(previous, epoch, arch, cache.num_classes, cfg, device, width, previous_state,
                                  distances)
    setup_s = time.perf_counter() - t0
    row = _epoch(epoch, model, optimizer, norm, cache, cfg, device, workers)
    t1 = time.perf_counter()
    meta = {"arch": arch, "width": width, "num_classes": cache.num_classes, "epoch": epoch, "seed": cfg.seed,
            "classes": list(cache.classes)}
    recipe = recipes.describe(model, cfg, epoch, distances)
    if recipe is not None:  # only then: a plain run's checkpoints stay as they were
        meta["recipe"] = recipe
    save_checkpoint(out, model, optimizer, meta | {"metrics": row, "config": epoch_params(asdict(cfg), epoch)},
                    state_path=state_out or resume_path(out))
    row |= {"setup_s": setup_s, "save_s": time.perf_counter() - t1}
    return {"epoch": epoch, **row}


def fine_tune(arch: str, cache: ImageCache, cfg: TrainConfig, weights_file: str | os.PathLike, *,
              device: torch.device | None = None, width: float = 1.0, workers: int = 1,
              distances: dict[str, float] | None = None) -> tuple[nn.Module, list[dict[str, float]]]:
    """Epochs 0..``cfg.epochs`` in one uninterrupted loop, without checkpoints: the reference that a
    chain of :func:`run_epoch` jobs reproduces bit for bit (on a CPU)."""
    device, norm = _setup(device, cfg)
    model = _place(_source_model(arch, weights_file, cache, cfg, width), device, cfg)
    rows = [{"epoch": 0, **_epoch(0, model, None, norm, cache, cfg, device, workers)}]
    optimizer = None
    for epoch in range(1, cfg.epochs + 1):
        if fresh_optimizer(asdict(cfg), epoch):
            optimizer = make_optimizer(model, cfg, device, recipes.param_groups(model, cfg, epoch, distances))
        rows.append({"epoch": epoch, **_epoch(epoch, model, optimizer, norm, cache, cfg, device, workers)})
    return model, rows
