"""torchvision classifiers by name, their ImageNet weights, and the new classification head.

Weights are named as torchvision names them (``IMAGENET1K_V1``) and go through torchvision's own
download cache (``$TORCH_HOME/hub/checkpoints``). torch.hub checks the sha256 prefix in the file
name only while downloading, so :func:`load_pretrained_state` checks it on the cached file before
reading it: a file placed in the cache by hand (or corrupted there) is verified too.

``width`` (default 1) builds the same architecture, with the same module paths and depth, with every
channel count scaled: a cheap stand-in for tests and smoke runs (random initialisation or a local
file only; torchvision's weights exist for width 1).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import densenet as tv_densenet
from torchvision.models import vgg as tv_vgg

from featdyn import FeatdynError
from featdyn.atomic import atomic_path

log = logging.getLogger("featdyn.nets.models")

_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")


def classification_models() -> list[str]:
    """Names of torchvision's image classification models."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


# `arch: timm/<name>`: a model of timm (PyTorch Image Models), imported only where one is configured
TIMM = "timm/"


def is_timm(arch: str) -> bool:
    return arch.startswith(TIMM)


def _timm():
    try:
        import timm
    except ImportError:
        raise FeatdynError("timm models need the package timm (pinned in requirements.txt): "
                           "pip install -r requirements.txt") from None
    return timm


def check_arch(arch: str) -> None:
    if is_timm(arch):
        names = _timm().list_models()
        name = arch[len(TIMM):]
        if name not in names:
            close = difflib.get_close_matches(name, names, n=5)
            raise FeatdynError(f"unknown timm model {name!r}" + (f"; did you mean {close}?" if close else ""))
        return
    names = classification_models()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=5)
        hint = f"; did you mean {close}?" if close else ""
        raise FeatdynError(f"unknown model architecture {arch!r}: expected a torchvision classification "
                           f"model name such as resnet50, vgg19, densenet121, mobilenet_v2{hint}")


def is_weights_file(weights: str | None) -> bool:
    """A weights value that names a local file rather than a torchvision weights enum."""
    return bool(weights) and (os.sep in weights or weights.endswith((".pt", ".pth")))


def resolve_weights(arch: str, name: str) -> torchvision.models.WeightsEnum | str:
    """The torchvision weights enum member ``name`` of ``arch`` (e.g. IMAGENET1K_V1, DEFAULT); for a
    timm model, its pretrained tag (``augreg_in21k_ft_in1k``) as timm's full name ``<model>.<tag>``."""
    if is_timm(arch):
        model = arch[len(TIMM):]
        tags = [t.partition(".")[2] for t in _timm().list_pretrained(f"{model}.*")]
        if name not in tags:
            # `weights` defaults to a torchvision name (IMAGENET1K_V1), which means nothing to timm
            hint = (f"; {name!r} is a torchvision weights name: a timm model needs `weights` given"
                    if name == "DEFAULT" or re.fullmatch(r"[A-Z0-9_]+_V\d+", name) else "")
            raise FeatdynError(f"unknown timm pretrained tag {name!r} for {model!r}; expected one of {tags} "
                               f"(or null for random initialisation, or a file path){hint}")
        return f"{model}.{name}"
    enum = torchvision.models.get_model_weights(arch)
    try:
        return enum[name] if name != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise FeatdynError(f"unknown weights {name!r} for model {arch!r}; expected one of "
                           f"{[w.name for w in enum]} (or null for random initialisation, or a file path)") from None


def cached_weights_path(weights: torchvision.models.WeightsEnum) -> Path:
    """Where torchvision keeps (or would download) the file of ``weights``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def verify_cached_file(path: Path) -> None:
    """Check a torchvision weights file against the sha256 prefix in its name (``name-<hash>.pth``)."""
    from featdyn.data.download import file_sha256

    match = _HASH_IN_NAME.search(path.name)
    if not match:
        return
    digest = file_sha256(path)
    if not digest.startswith(match.group(1)):
        raise FeatdynError(f"weights file {path} fails its hash check (sha256 {digest[:12]}..., expected "
                           f"prefix {match.group(1)}); delete it so that it is fetched again")
    log.info("weights file %s verified (sha256 %s...)", path, digest[:12])


# --- architectures at a reduced width (same module paths, same depth) ---------------------------------

def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _init_like_torchvision(modules) -> None:
    """The initialisation torchvision's VGG/ResNet/DenseNet constructors apply to new modules."""
    for m in modules:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


_VGG_CFG = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}
_DENSENET_CFG = {"densenet121": (32, (6, 12, 24, 16), 64), "densenet161": (48, (6, 12, 36, 24), 96),
                 "densenet169": (32, (6, 12, 32, 32), 64), "densenet201": (32, (6, 12, 48, 32), 64)}


def _vgg(arch: str, width: float) -> nn.Module:
    cfg = [v if v == "M" else _scaled(v, width) for v in tv_vgg.cfgs[_VGG_CFG[arch.removesuffix("_bn")]]]
    # VGG's constructor hard-codes a 512 * 7 * 7 -> 4096 -> 4096 classifier (100M parameters): build
    # the shell on the meta device, then both parts at scale with the same module indices.
    with torch.device("meta"):
        model = tv_vgg.VGG(nn.Sequential(), init_weights=False)
    model.features = tv_vgg.make_layers(cfg, batch_norm=arch.endswith("_bn"))
    c, hidden = cfg[-2], _scaled(4096, width)
    model.classifier = nn.Sequential(nn.Linear(c * 49, hidden), nn.ReLU(True), nn.Dropout(0.5),
                                     nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(0.5),
                                     nn.Linear(hidden, 1000))
    _init_like_torchvision(model.modules())
    return model


def _resnet(arch: str, width: float) -> nn.Module:
    with torch.device("meta"):  # only the structure of the full-width model is needed
        model = torchvision.models.get_model(arch, weights=None)
    if model.groups != 1:
        raise FeatdynError(f"width: grouped ResNets ({arch}) cannot be scaled; use width 1")
    block = type(model.layer1[0])
    depths = [len(getattr(model, f"layer{i}")) for i in range(1, 5)]
    planes = _scaled(64, width)
    model.inplanes, model.dilation = planes, 1
    model.conv1 = nn.Conv2d(3, planes, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = model._norm_layer(planes)
    for i, depth in enumerate(depths):
        setattr(model, f"layer{i + 1}", model._make_layer(block, planes * 2**i, depth, stride=1 if i == 0 else 2))
    model.fc = nn.Linear(planes * 8 * block.expansion, 1000)
    _init_like_torchvision(model.modules())
    return model


def _densenet(arch: str, width: float) -> nn.Module:
    growth, blocks, init = _DENSENET_CFG[arch]
    return tv_densenet.DenseNet(_scaled(growth, width), blocks, _scaled(init, width))


def _mobilenet_v2(arch: str, width: float) -> nn.Module:
    return torchvision.models.get_model(arch, weights=None, width_mult=width)


def _multiple(value: int, width: float, of: int) -> int:
    """``value * width`` rounded to a multiple of ``of`` (at least ``of``): attention heads must
    divide the embedding."""
    return max(of, round(value * width / of) * of)


def _vit(arch: str, width: float) -> nn.Module:
    """A torchvision ViT with its embedding and MLP scaled (same heads, depth, patch, image size)."""
    from torchvision.models.vision_transformer import VisionTransformer

    with torch.device("meta"):
        full = torchvision.models.get_model(arch, weights=None)
    heads = full.encoder.layers[0].self_attention.num_heads
    return VisionTransformer(full.image_size, full.patch_size, len(full.encoder.layers), heads,
                             _multiple(full.hidden_dim, width, heads), _scaled(full.mlp_dim, width))


def _swin(arch: str, width: float) -> nn.Module:
    """A torchvision Swin (v1 or v2) with its embedding scaled (same depths, heads, windows)."""
    from torchvision.models import swin_transformer as tv_swin

    with torch.device("meta"):
        full = torchvision.models.get_model(arch, weights=None)
    stages = [full.features[i] for i in range(1, len(full.features), 2)]
    first = stages[0][0]
    heads = [stage[0].attn.num_heads for stage in stages]
    v2 = isinstance(first, tv_swin.SwinTransformerBlockV2)
    return tv_swin.SwinTransformer(
        patch_size=list(full.features[0][0].kernel_size), embed_dim=_multiple(full.features[0][0].out_channels,
                                                                               width, heads[0]),
        depths=[len(stage) for stage in stages], num_heads=heads, window_size=list(first.attn.window_size),
        stochastic_depth_prob=stages[-1][-1].stochastic_depth.p,
        block=tv_swin.SwinTransformerBlockV2 if v2 else tv_swin.SwinTransformerBlock,
        downsample_layer=tv_swin.PatchMergingV2 if v2 else tv_swin.PatchMerging)


def _convnext(arch: str, width: float) -> nn.Module:
    """A torchvision ConvNeXt with every stage's channels scaled (same depths)."""
    from torchvision.models import convnext as tv_convnext

    with torch.device("meta"):
        full = torchvision.models.get_model(arch, weights=None)
    stages = [full.features[i] for i in range(1, len(full.features), 2)]
    channels = [_scaled(stage[0].block[0].in_channels, width) for stage in stages]
    setting = [tv_convnext.CNBlockConfig(c, channels[i + 1] if i + 1 < len(stages) else None, len(stage))
               for i, (c, stage) in enumerate(zip(channels, stages))]
    return tv_convnext.ConvNeXt(setting, stochastic_depth_prob=stages[-1][-1].stochastic_depth.p)


def _scaler(arch: str) -> Callable[[str, float], nn.Module] | None:
    if arch.removesuffix("_bn") in _VGG_CFG:
        return _vgg
    if arch.startswith(("resnet", "wide_resnet")):
        return _resnet
    if arch in _DENSENET_CFG:
        return _densenet
    if arch == "mobilenet_v2":
        return _mobilenet_v2
    if arch.startswith("vit_"):
        return _vit
    if arch.startswith("swin_"):
        return _swin
    if arch.startswith("convnext_"):
        return _convnext
    return None


def check_width(arch: str, width: float) -> None:
    if width <= 0:
        raise FeatdynError(f"width must be positive, got {width}")
    if width != 1 and _scaler(arch) is None:
        raise FeatdynError(f"width {width}: reduced widths exist for vgg*, resnet*, wide_resnet*, densenet*, "
                           f"mobilenet_v2, vit_*, swin_* and convnext_*, not {arch!r} (its channel counts are "
                           f"tied to searched or grouped settings that a multiplier would break); use width 1")


@contextlib.contextmanager
def _widths_on_cpu():
    """RegNet's constructor computes its stage widths with tensors (``.tolist()``), which the meta
    device cannot: compute them on the CPU while the modules go to the meta device."""
    from torchvision.models import regnet

    original = regnet.BlockParams.__dict__["from_init_params"]

    def on_cpu(cls, *args, **kwargs):
        with torch.device("cpu"):
            return original.__func__(cls, *args, **kwargs)

    regnet.BlockParams.from_init_params = classmethod(on_cpu)
    try:
        yield
    finally:
        regnet.BlockParams.from_init_params = original


def construct(arch: str, width: float = 1.0, *, meta: bool = False) -> nn.Module:
    """A randomly initialised ``arch`` with its ImageNet head (1000 outputs), at ``width``.

    ``meta`` builds it without memory or initialisation (a VGG19 takes ~2 s to initialise on a
    CPU), for loading a full state dict with ``load_state_dict(..., assign=True)``.
    """
    check_arch(arch)
    check_width(arch, width)
    if meta:
        with torch.device("meta"), _widths_on_cpu():
            return construct(arch, width)
    if is_timm(arch):
        return _timm().create_model(arch[len(TIMM):], pretrained=False)
    if width == 1:
        return torchvision.models.get_model(arch, weights=None)
    return _scaler(arch)(arch, width)


def _shell(arch: str, width: float, num_classes: int) -> nn.Module:
    """``arch`` with a ``num_classes`` head, on the meta device (no memory, no initialisation)."""
    model = construct(arch, width, meta=True)
    if num_classes != 1000:
        with torch.device("meta"):
            replace_head(model, num_classes)
    return model


def _with_state(arch: str, width: float, num_classes: int, state: dict[str, torch.Tensor],
                what: str) -> nn.Module:
    """``arch`` with a ``num_classes`` head holding ``state`` (checked strictly), built without
    initialising it: the state's tensors are assigned."""
    model = _shell(arch, width, num_classes)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise FeatdynError(f"{what} does not fit model {arch!r} with {num_classes} classes: {str(exc)[:600]}") from exc
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        # A non-persistent buffer is in no state dict: build this model for real instead.
        model = construct(arch, width)
        replace_head(model, num_classes)
        model.load_state_dict(state, strict=True)
    return model


def load_pretrained_state(arch: str, weights: str | None, seed: int = 0,
                          width: float = 1.0) -> dict[str, torch.Tensor]:
    """The source model's state dict: torchvision weights by name (hash-checked), a local file,
    or (``weights`` None) a seeded random initialisation."""
    check_arch(arch)
    check_width(arch, width)
    if weights is None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return construct(arch, width).state_dict()
    if is_weights_file(weights):
        path = Path(weights)
        if not path.is_file():
            raise FeatdynError(f"weights file {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a bad file
            raise FeatdynError(f"cannot read weights file {path}: {exc}") from exc
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise FeatdynError(f"weights file {path} holds no state dict (name -> tensor)")
        return state
    if width != 1:
        raise FeatdynError(f"torchvision weights {weights!r} exist for width 1 only, not width {width}")
    if is_timm(arch):  # through timm's own cache (Hugging Face hub), as torchvision's through torch.hub's
        full = resolve_weights(arch, weights)
        log.info("loading timm weights %s", full)
        try:
            return _timm().create_model(full, pretrained=True).state_dict()
        except Exception as exc:  # noqa: BLE001 - network, hub and file errors alike
            raise FeatdynError(f"cannot fetch timm weights {full}: {exc} (without internet, run the fetch_weights "
                               f"rule where there is; timm keeps them in the Hugging Face cache, $HF_HOME, by "
                               f"default ~/.cache/huggingface)") from exc
    enum = resolve_weights(arch, weights)
    path = cached_weights_path(enum)
    if path.is_file():  # verify before unpickling: a corrupt file must fail with its name
        verify_cached_file(path)
        return enum.get_state_dict(progress=False, check_hash=False)
    log.info("downloading %s.%s from %s", arch, enum.name, enum.url)
    try:
        state = enum.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError) as exc:  # no network, HTTP errors, torch.hub's own hash check
        raise FeatdynError(f"cannot fetch weights {arch}.{enum.name} from {enum.url} into {path}: {exc} (without "
                           f"internet, run the fetch_weights rule where there is, or put the file there)") from exc
    verify_cached_file(path)
    return state


def num_outputs(arch: str, state: dict[str, torch.Tensor], width: float = 1.0, what: str = "the state dict") -> int:
    """Number of classes of a state dict of ``arch``: the out-dimension of its head's weight."""
    key = head_path(construct(arch, width, meta=True)) + ".weight"
    if key not in state:
        raise FeatdynError(f"{what} does not fit model {arch!r}: it has no {key!r}")
    return int(state[key].shape[0])


def fetch_weights(arch: str, weights: str | None, out: str | os.PathLike, seed: int = 0,
                  width: float = 1.0) -> None:
    """Resolve the source weights once (on a node with internet) into a local file ``out``."""
    state = load_pretrained_state(arch, weights, seed, width)
    what = f"weights file {weights}" if is_weights_file(weights) else f"weights {weights!r}"
    model = _with_state(arch, width, num_outputs(arch, state, width, what), state, what)
    with atomic_path(out) as tmp:
        torch.save({"arch": arch, "weights": weights, "width": width, "state_dict": model.state_dict()}, tmp)


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
    """Replace the last layer with a fresh one of ``num_classes`` outputs; return its path.

    The new layer is created on the current default device (real memory unless inside a
    ``torch.device('meta')`` block), so that its initialisation follows the global seed.
    """
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


def build_model(arch: str, num_classes: int, width: float = 1.0, state: dict | None = None) -> nn.Module:
    """``arch`` with ``num_classes`` outputs (the shape of a fine-tuned checkpoint).

    With ``state`` (a full state dict) the model is built without initialising it and the state is
    assigned; without, it is randomly initialised.
    """
    if state is None:
        model = construct(arch, width)
        replace_head(model, num_classes)
        return model
    return _with_state(arch, width, num_classes, state, "the saved state")


def build_source_model(arch: str, weights_file: str | os.PathLike, num_classes: int, seed: int,
                       width: float = 1.0) -> nn.Module:
    """The source model of a fine-tuning run: pretrained backbone, new head seeded by ``seed``."""
    try:
        saved = torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FeatdynError(f"cannot read weights file {weights_file}: {exc}") from exc
    if not isinstance(saved, dict) or saved.get("arch") != arch:
        got = saved.get("arch") if isinstance(saved, dict) else None
        raise FeatdynError(f"weights file {weights_file} holds model {got!r}, expected {arch!r}")
    if saved.get("width", 1.0) != width:
        raise FeatdynError(f"weights file {weights_file} is of width {saved.get('width', 1.0)}, expected {width}")
    state = saved["state_dict"]
    what = f"weights file {weights_file}"
    model = _with_state(arch, width, num_outputs(arch, state, width, what), state, what)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        replace_head(model, num_classes)
    return model
