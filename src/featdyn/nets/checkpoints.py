"""The checkpoint format: an epoch's weights with their metadata, and its resume state.

An epoch is saved as two files: the checkpoint (weights and metadata: what extraction reads, kept
for every epoch) and its resume state (the optimizer state, ``<stem>.resume.pt``: only the next
epoch reads it, so the workflow deletes it once that epoch exists; Adam's state is twice the size
of the weights). Both are written atomically, carry :data:`CHECKPOINT_FORMAT`, and are refused when
they hold non-finite weights or another format.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from featdyn import FeatdynError
from featdyn.atomic import atomic_path, remove_stale_temporaries, write_error
from featdyn.finite import describe_nonfinite, peak
from featdyn.nets.models import build_model

CHECKPOINT_FORMAT = 3


def check_weights(state: dict, what: str) -> None:
    """Every floating-point tensor of a state dict is finite; the error names the tensor."""
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not math.isfinite(peak(t)):
            raise FeatdynError(f"{what}: weight {name!r} is not finite: {describe_nonfinite(t)}")


def resume_path(checkpoint: str | os.PathLike) -> Path:
    """Where the resume state of ``checkpoint`` goes by default: ``epoch_3.pt`` -> ``epoch_3.resume.pt``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".resume.pt")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    meta: dict, state_path: str | os.PathLike | None = None) -> None:
    """Atomically save the weights plus ``meta`` (arch, num_classes, epoch, seed...) to ``path``, and
    the optimizer state to ``state_path`` (default: :func:`resume_path` when there is an optimizer;
    none without one). The state is written first, so a checkpoint never exists without it.

    Temporaries left by a killed save are removed first (VGG19's Adam state: 1.1 GB). torch.save
    writes through a Python file object, so that a full disk surfaces as the OSError 'No space left
    on device' (torch's own writer reports only an 'unexpected pos'); the error names the file and
    the space left.
    """
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    check_weights(weights, f"checkpoint {path} (epoch {meta.get('epoch')}), before saving")
    if state_path is None and optimizer is not None:
        state_path = resume_path(path)
    if state_path is not None:
        _save({"format": CHECKPOINT_FORMAT, "epoch": meta.get("epoch"), "seed": meta.get("seed"),
               "optimizer": optimizer.state_dict() if optimizer is not None else None}, state_path)
    _save({"format": CHECKPOINT_FORMAT, **meta, "model": weights}, path)


def _save(payload: dict, path: str | os.PathLike) -> None:
    remove_stale_temporaries(path)
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                torch.save(payload, f)
        except (OSError, RuntimeError) as exc:
            raise write_error(path, exc) from exc


def load_checkpoint(path: str | os.PathLike, arch: str | None = None, num_classes: int | None = None,
                    width: float | None = None) -> dict:
    """Load a checkpoint and check that it belongs to ``arch`` at ``width`` with ``num_classes`` outputs.

    Tensors are memory-mapped (loaded when used).
    """
    ckpt = _load(path, "checkpoint")
    if arch is not None and ckpt["arch"] != arch:
        raise FeatdynError(f"checkpoint {path} is of model {ckpt['arch']!r}, expected {arch!r}")
    if width is not None and ckpt.get("width", 1.0) != width:
        raise FeatdynError(f"checkpoint {path} is of width {ckpt.get('width', 1.0)}, expected {width}")
    if num_classes is not None and ckpt["num_classes"] != num_classes:
        raise FeatdynError(f"checkpoint {path} has {ckpt['num_classes']} classes, expected {num_classes}")
    check_weights(ckpt["model"], f"checkpoint {path} (epoch {ckpt.get('epoch')})")
    return ckpt


def _load(path: str | os.PathLike, what: str) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise FeatdynError(f"cannot read {what} {path}: {exc}") from exc
    if not isinstance(ckpt, dict) or "format" not in ckpt:
        raise FeatdynError(f"{path} is not a featdyn {what} (format {CHECKPOINT_FORMAT})")
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise FeatdynError(f"{what} {path} has format {ckpt['format']}, this featdyn reads format "
                           f"{CHECKPOINT_FORMAT}: delete it (and the later epochs) to recompute them")
    return ckpt


def load_resume_state(path: str | os.PathLike, epoch: int, seed: int) -> dict:
    """The optimizer state saved with checkpoint ``epoch``, checked against it."""
    if not Path(path).is_file():
        raise FeatdynError(f"resume state {path} is missing: it is deleted once the next epoch exists; "
                           f"recompute epoch {epoch} (delete its checkpoint) to continue from it")
    state = _load(path, "resume state")
    if (state["epoch"], state["seed"]) != (epoch, seed):
        raise FeatdynError(f"resume state {path} belongs to epoch {state['epoch']} (seed {state['seed']}), "
                           f"not to the checkpoint of epoch {epoch} (seed {seed})")
    return state


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    return build_model(ckpt["arch"], ckpt["num_classes"], ckpt.get("width", 1.0), state=ckpt["model"])
