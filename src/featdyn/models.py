"""torchvision classifiers by name, their ImageNet weights, and the new classification head.

Weights are named as torchvision names them (``IMAGENET1K_V1``) and go through torchvision's own
download cache (``$TORCH_HOME/hub/checkpoints``). torch.hub checks the sha256 prefix in the file
name only while downloading, so :func:`fetch_weights` checks it again on the cached file: a file
placed in the cache by hand (or corrupted there) is verified too.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
import re
from pathlib import Path

import torch
import torchvision
from torch import nn

from . import FeatdynError
from .atomic import atomic_path

log = logging.getLogger("featdyn.models")

_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")


def classification_models() -> list[str]:
    """Names of torchvision's image classification models."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_arch(arch: str) -> None:
    names = classification_models()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=5)
        hint = f"; did you mean {close}?" if close else ""
        raise FeatdynError(f"unknown model architecture {arch!r}: expected a torchvision classification "
                           f"model name such as resnet50, vgg19, densenet121, mobilenet_v2{hint}")


def weight_names(arch: str) -> list[str]:
    check_arch(arch)
    return [w.name for w in torchvision.models.get_model_weights(arch)]


def is_weights_file(weights: str | None) -> bool:
    """A weights value that names a local file rather than a torchvision weights enum."""
    return bool(weights) and (os.sep in weights or weights.endswith((".pt", ".pth")))


def resolve_weights(arch: str, name: str) -> torchvision.models.WeightsEnum:
    """The torchvision weights enum member ``name`` of ``arch`` (e.g. IMAGENET1K_V1, DEFAULT)."""
    enum = torchvision.models.get_model_weights(arch)
    try:
        return enum[name] if name != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise FeatdynError(f"unknown weights {name!r} for model {arch!r}; expected one of "
                           f"{[w.name for w in enum]} (or null for random initialisation, or a file path)") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def cached_weights_path(weights: torchvision.models.WeightsEnum) -> Path:
    """Where torchvision keeps (or would download) the file of ``weights``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def load_pretrained_state(arch: str, weights: str | None, seed: int = 0) -> dict[str, torch.Tensor]:
    """The source model's state dict: torchvision weights by name (hash-checked), a local file,
    or (``weights`` None) a seeded random initialisation."""
    check_arch(arch)
    if weights is None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return torchvision.models.get_model(arch, weights=None).state_dict()
    if is_weights_file(weights):
        path = Path(weights)
        if not path.is_file():
            raise FeatdynError(f"weights file {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a bad file
            raise FeatdynError(f"cannot read weights file {path}: {exc}") from exc
        return state.get("state_dict", state) if isinstance(state, dict) else state
    enum = resolve_weights(arch, weights)
    path = cached_weights_path(enum)
    state = enum.get_state_dict(progress=False, check_hash=True)
    match = _HASH_IN_NAME.search(path.name)
    if match and path.is_file():
        digest = _sha256(path)
        if not digest.startswith(match.group(1)):
            raise FeatdynError(f"weights file {path} fails its hash check (sha256 {digest[:12]}..., expected "
                               f"prefix {match.group(1)}); delete it so that it is fetched again")
        log.info("weights %s.%s verified: %s (sha256 %s...)", arch, enum.name, path, digest[:12])
    return state


def fetch_weights(arch: str, weights: str | None, out: str | os.PathLike, seed: int = 0) -> None:
    """Resolve the source weights once (on a node with internet) into a local file ``out``."""
    state = load_pretrained_state(arch, weights, seed)
    model = torchvision.models.get_model(arch, weights=None, num_classes=_num_outputs(state))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise FeatdynError(f"weights {weights!r} do not fit model {arch!r}: {str(exc)[:500]}") from exc
    with atomic_path(out) as tmp:
        torch.save({"arch": arch, "weights": weights, "state_dict": model.state_dict()}, tmp)


def _num_outputs(state: dict[str, torch.Tensor]) -> int:
    """Number of classes of a classifier state dict (the out-dimension of its last weight)."""
    last = [k for k in state if k.endswith("weight")][-1]
    return int(state[last].shape[0])


def head_path(model: nn.Module) -> str:
    """Module path of the classification head: the last Linear (or 1x1 Conv2d classifier) module."""
    candidates = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not candidates:
        candidates = [name for name, m in model.named_modules()
                      if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    if not candidates:
        raise FeatdynError(f"cannot find the classification head of {type(model).__name__}")
    return candidates[-1]


def replace_head(model: nn.Module, num_classes: int) -> str:
    """Replace the last layer with a fresh one of ``num_classes`` outputs; return its path."""
    path = head_path(model)
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, attr)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=1)
    setattr(parent, attr, new)
    return path


def build_model(arch: str, num_classes: int) -> nn.Module:
    """An untrained ``arch`` with ``num_classes`` outputs (the shape of a fine-tuned checkpoint)."""
    check_arch(arch)
    model = torchvision.models.get_model(arch, weights=None)
    replace_head(model, num_classes)
    return model


def build_source_model(arch: str, weights_file: str | os.PathLike, num_classes: int, seed: int) -> nn.Module:
    """The source model of a fine-tuning run: pretrained backbone, new head seeded by ``seed``."""
    try:
        saved = torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FeatdynError(f"cannot read weights file {weights_file}: {exc}") from exc
    if saved.get("arch") != arch:
        raise FeatdynError(f"weights file {weights_file} holds model {saved.get('arch')!r}, expected {arch!r}")
    state = saved["state_dict"]
    model = torchvision.models.get_model(arch, weights=None, num_classes=_num_outputs(state))
    model.load_state_dict(state, strict=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        replace_head(model, num_classes)
    return model
