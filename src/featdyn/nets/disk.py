"""Disk a run needs, per stage, estimated before anything runs (``make plan``).

From the config and each dataset's size: the image caches (uint8, S x S x 3 per image), the models'
parameters and layer shapes on the meta device (no weights, no memory), the stored dtype and
codec, and the formats the stages write (float32 weights per epoch, the optimizer state of the
last epoch, float64 statistics). Activation stores compressed with zstd are scaled by the
compression ratio measured per architecture (benchmarks/README.md, "Activation capture": float32
ReLU maps of randomly initialised models at 224 px; trained models' deeper maps are sparser and
usually compress better, so the estimate errs on the large side).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# zstd-1 compression ratio (raw bytes / stored bytes) measured per architecture; others use the
# lowest measured one.
ZSTD_RATIO = {"mobilenet_v2": 1.63, "resnet50": 1.71, "vgg19": 2.04, "densenet121": 1.96}
ZSTD_DEFAULT = min(ZSTD_RATIO.values())
ITEMSIZE = {"float32": 4, "float16": 2}
CSV_ROW_BYTES = 80  # a row of a per-filter or score table (model, dataset, layer, class, filter, value...)
FIGURE_BYTES = 300_000  # one similarity figure (PNG)


@dataclass(frozen=True)
class DatasetSize:
    """How many images a dataset has (after the class draw) in how many classes."""

    images: int
    classes: int


@dataclass
class Stage:
    """Bytes a stage leaves on disk at the end of the run (``kept``) and holds at most while it
    runs (``peak``)."""

    stage: str
    rule: str
    kept: int
    peak: int
    note: str = ""


@dataclass(frozen=True)
class ModelSize:
    weights: int  # bytes of one checkpoint's state dict (the new head included)
    params: int  # trainable parameters (the optimizer keeps 1 or 2 float32 values per parameter)
    layers: dict[str, tuple[int, ...]]  # (C, H, W) per analysed layer


def model_size(arch: str, width: float, classes: int, layers: list[str], image_size: int) -> ModelSize:
    """Sizes of ``arch`` with a ``classes``-way head, from the meta device."""
    import torch

    from featdyn.nets.layers import layer_shapes
    from featdyn.nets.models import construct, replace_head

    model = construct(arch, width, meta=True)
    with torch.device("meta"):
        replace_head(model, classes)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ModelSize(weights, params, layer_shapes(arch, layers, image_size, width))


def probe_images(size: DatasetSize, per_class: int, test_fraction: float) -> int:
    """Probe images: ``per_class`` test images per class, fewer where a class has fewer."""
    test_per_class = max(1, round(size.images / size.classes * test_fraction))
    return size.classes * min(per_class, test_per_class)


def optimizer_values(training: Mapping) -> int:
    """float32 values the optimizer keeps per parameter: Adam's two moments, SGD's momentum."""
    if training["optimizer"] == "adam":
        return 2
    return 1 if training["momentum"] else 0


def estimate(config: Mapping, sizes: Mapping[str, DatasetSize]) -> list[Stage]:
    """Bytes per stage for ``config`` (the workflow's config, defaults filled in by
    :func:`featdyn.spec.config.with_defaults`) and the datasets' ``sizes``."""
    from featdyn.spec.config import analysed_epochs, layers_of
    from featdyn.spec.hyperparams import training_config

    s = int(config["image_size"])
    retention, extraction = config["retention"], config["extraction"]
    itemsize = ITEMSIZE[extraction["dtype"]]
    per_class = config["probe"]["per_class"]
    test_fraction = config["split"]["test_fraction"]
    filter_metrics = [m for m, b in config["metrics"].items() if b["granularity"] == "filter"]

    caches = sum(size.images * (s * s * 3 + 120) for size in sizes.values())
    known: dict[tuple, ModelSize] = {}

    def sized(mname: str, classes: int) -> ModelSize:
        spec = config["models"][mname]
        key = (spec["arch"], spec["width"], classes, tuple(layers_of(config, mname)))
        if key not in known:
            known[key] = model_size(key[0], key[1], classes, list(key[3]), s)
        return known[key]

    source = ckpts = states = states_peak = stores = stores_peak = stats = filters = scores = 0
    for mname, spec in config["models"].items():
        arch = spec["arch"]
        source += sized(mname, 1000).weights
        for dname, size in sizes.items():
            m = sized(mname, size.classes)
            training = training_config(config, mname, dname)
            epochs = analysed_epochs(config, mname, dname)
            state = m.params * 4 * optimizer_values(training)
            ckpts += (training["epochs"] + 1) * (m.weights + 2_000)
            kept_state = state if retention["final_state"] == "keep" else 0
            states += kept_state
            states_peak += max(kept_state, 2 * state)  # epoch e's state lives until e + 1 is saved
            ratio = ZSTD_RATIO.get(arch, ZSTD_DEFAULT) if extraction["codec"] == "zstd" else 1.0
            per_store = probe_images(size, per_class, test_fraction) * sum(
                c * h * w for c, h, w in m.layers.values()) * itemsize / ratio
            kept_stores = per_store * len(epochs) if retention["activations"] == "keep" else 0
            stores += kept_stores
            # dropped stores: the source store and one in flight per chain (more if extraction runs ahead)
            stores_peak += max(kept_stores, 2 * per_store)
            channels = [shape[0] for shape in m.layers.values()]
            stats += sum((c * c + 2 * c) * 8 for c in channels) * (1 + len(epochs))  # source + pairs
            stats += sum(c * c * 8 for c in channels) * len(epochs)  # the cross term of each epoch
            filters += len(filter_metrics) * len(epochs) * sum(channels) * size.classes * CSV_ROW_BYTES
            scores += len(config["metrics"]) * len(epochs) * len(channels) * CSV_ROW_BYTES
    scores += len(config["models"]) * FIGURE_BYTES

    def stage(name, rule, kept, peak=None, note=""):
        return Stage(name, rule, int(kept), int(kept if peak is None else peak), note)

    return [
        stage("image caches", "prepare_dataset", caches, note=f"{s} x {s} x 3 bytes per image"),
        stage("source weights", "fetch_weights", source),
        stage("checkpoints (weights of every epoch)", "finetune_epoch", ckpts),
        stage("resume states (optimizer)", "finetune_epoch", states, states_peak,
              "the last epoch's kept" if retention["final_state"] == "keep" else "none kept"),
        stage("activation stores", "extract", stores, stores_peak,
              f"{extraction['dtype']}, {extraction['codec']}"
              + ("" if retention["activations"] == "keep" else "; dropped once read")),
        stage("statistics (float64)", "source_stats, layer_stats", stats),
        stage("per-filter tables", "filter_scores", filters),
        stage("scores, tables, figures", "score, table*, similarity_curves", scores),
    ]


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def table(stages: list[Stage]) -> str:
    """The estimate as a Markdown table with totals."""
    lines = ["| stage | rule | kept | peak | |", "|---|---|---:|---:|---|"]
    for st in stages:
        lines.append(f"| {st.stage} | `{st.rule}` | {human(st.kept)} | {human(st.peak)} | {st.note} |")
    lines.append(f"| **total** | | **{human(sum(st.kept for st in stages))}** | "
                 f"**{human(sum(st.peak for st in stages))}** | peak: the stages' peaks added up |")
    return "\n".join(lines)
