"""Resolve and check a workflow config beyond what its JSON schema can say.

The schema (workflow/schemas/config.schema.yaml) checks types and names; this module checks the
meaning (the model and weights exist in torchvision, dataset folders exist and hold images, a
metric's parameters fit its kind) and fills in defaults, so that a bad config stops before any job
runs with a message naming the key.
"""

from __future__ import annotations

import copy
from pathlib import Path

from featdyn import FeatdynError
from featdyn.spec.hyperparams import training_config
from featdyn.spec.layouts import TOKEN_READINGS
from featdyn.spec.metric_kinds import FILTER_KINDS, check_params
from featdyn.spec.replicates import replicates_of
from featdyn.spec.schema import fill_defaults, load_schema, schema_path

# The repository holding this library (src/featdyn/spec/config.py): its workflow's schema
REPO = Path(__file__).resolve().parents[3]

DATASET_SOURCES = ("demo", "path", "train", "test", "url")


def analysed_epochs(config: dict, model: str, dataset: str) -> list[int]:
    """Epochs whose activations are captured and compared: 0 (the source) and the analysed ones."""
    t = training_config(config, model, dataset)["epochs"]
    wanted = config["analysis"]["epochs"]
    if wanted == "all":
        return list(range(t + 1))
    return [0] + sorted({e for e in wanted if e <= t})


def dataset_kind(name: str, spec: dict) -> str:
    """'demo', 'tree' (one folder, split here), 'pair' (train/test folders) or 'url' (an archive,
    downloaded and unpacked; ``path`` or ``train`` + ``test`` then name folders inside it)."""
    given = [k for k in DATASET_SOURCES if k in spec]
    if "url" in spec:
        if "sha256" not in spec:
            raise FeatdynError(f"datasets.{name}: a url needs its sha256 (datasets.{name}.sha256)")
        if "demo" in spec:
            raise FeatdynError(f"datasets.{name}: give either url or demo, not both")
        inside = sorted(k for k in given if k != "url")
        if inside not in ([], ["path"], ["test", "train"]):
            raise FeatdynError(f"datasets.{name}: with a url, give nothing, `path`, or `train` + `test` "
                               f"(folders inside the unpacked archive); got {inside}")
        for key in inside:
            if Path(spec[key]).is_absolute() or ".." in Path(spec[key]).parts:
                raise FeatdynError(f"datasets.{name}.{key}: with a url, {spec[key]!r} must be a path "
                                   f"inside the unpacked archive (relative, without '..')")
        return "url"
    if given == ["demo"]:
        return "demo"
    if given == ["path"]:
        return "tree"
    if sorted(given) == ["test", "train"]:
        return "pair"
    raise FeatdynError(f"datasets.{name}: expected exactly one of `demo`, `path`, `train` + `test`, or `url` "
                       f"(+ `sha256`); got {given or 'none'}")


def dataset_roots(name: str, spec: dict, data_dir: str) -> dict[str, str]:
    """The folders the prepare step reads: ``{'root': ...}`` or ``{'train': ..., 'test': ...}``.

    ``data_dir`` is the dataset's results folder: demo trees are materialised in ``<data_dir>/images``
    and url archives unpacked in ``<data_dir>/raw``.
    """
    kind = dataset_kind(name, spec)
    if kind == "demo":
        return {"root": f"{data_dir}/images"}
    base = f"{data_dir}/raw/" if kind == "url" else ""
    if "train" in spec:
        return {"train": base + spec["train"], "test": base + spec["test"]}
    if "path" in spec:
        return {"root": base + spec["path"]}
    return {"root": f"{data_dir}/raw"}


def layers_of(config: dict, model: str) -> list[str]:
    """The model's layers: a list given in the config, the paper's ``preset``, or ``auto``
    (featdyn.nets.auto_layers); ``preset`` (the default) is auto for an arch without a paper preset."""
    from featdyn.spec.auto_layers import auto_layers_of
    from featdyn.spec.layer_presets import PRESETS, preset

    spec = config["models"][model]
    layers = spec["layers"]
    if layers == "auto" or (layers == "preset" and spec["arch"] not in PRESETS):
        return auto_layers_of(spec["arch"], spec["width"], int(config["image_size"]))
    return preset(spec["arch"]) if layers == "preset" else list(layers)


def metric_params(config: dict, metric: str) -> dict:
    """A metric's parameter block with defaults: kind, granularity and the kind's own parameters."""
    block = dict(config["metrics"][metric])
    kind = block.pop("kind")
    granularity = block.pop("granularity", "layer")
    tokens = block.pop("tokens", "patches")
    if granularity == "filter" and kind not in FILTER_KINDS:
        raise FeatdynError(f"metrics.{metric}: granularity 'filter' exists for {list(FILTER_KINDS)}, not {kind!r}")
    if tokens not in TOKEN_READINGS:
        raise FeatdynError(f"metrics.{metric}.tokens: {tokens!r}; expected one of {list(TOKEN_READINGS)}")
    if granularity == "filter" and tokens != "patches":
        raise FeatdynError(f"metrics.{metric}.tokens: {tokens!r} gives one value per image and filter, no map: "
                           f"filter granularity reads a token layer's patch grid (tokens: patches)")
    try:
        params = check_params(kind, block)
    except FeatdynError as exc:
        raise FeatdynError(f"metrics.{metric}: {exc}") from None
    if granularity == "filter" and params.get("debiased"):
        raise FeatdynError(f"metrics.{metric}: debiased cka exists at granularity 'layer' only (the per-filter "
                           f"reading compares one map pair at a time)")
    # `tokens` only where it is not the default: configs without token readings keep their params
    return {"kind": kind, "granularity": granularity, **({"tokens": tokens} if tokens != "patches" else {}), **params}


def token_readings(config: dict) -> list[str]:
    """The token readings besides the patch grid that the layer metrics ask for ('cls', 'mean'):
    the statistics jobs keep them for every token layer."""
    wanted = {metric_params(config, m).get("tokens") for m in config["metrics"]}  # absent: patches
    return sorted(wanted - {None, "patches"})


def check(config: dict, base: str | Path = ".") -> None:
    """Raise FeatdynError naming every problem found in ``config`` (paths relative to ``base``)."""
    config = with_defaults(config)
    from featdyn.data.datasets import check_training_tree, check_tree
    from featdyn.nets.layouts import layer_layouts
    from featdyn.nets.models import check_arch, check_width, is_weights_file, resolve_weights

    problems: list[str] = []

    def attempt(fn, *args) -> None:
        try:
            fn(*args)
        except FeatdynError as exc:
            # two checks that meet the same problem (the layers of a model whose width or image size
            # is refused) say it once, with the longer message (the one that names the key)
            msg = str(exc)
            if not any(msg in p for p in problems):
                problems[:] = [p for p in problems if p not in msg] + [msg]

    checked_layers: set[tuple] = set()
    for name, spec in config["models"].items():
        def model_checks(name=name, spec=spec) -> None:
            try:
                check_arch(spec["arch"])
            except FeatdynError as exc:
                raise FeatdynError(f"models.{name}.arch: {exc}") from None
            weights, width = spec["weights"], spec["width"]
            try:
                check_width(spec["arch"], width)
            except FeatdynError as exc:
                raise FeatdynError(f"models.{name}.width: {exc}") from None
            if width != 1 and weights is not None and not is_weights_file(weights):
                raise FeatdynError(f"models.{name}.width: torchvision's {weights} weights exist for width 1 "
                                   f"only; use weights: null (random initialisation) or a file")
            if weights is not None and is_weights_file(weights):
                if not (Path(base) / weights).is_file():
                    raise FeatdynError(f"models.{name}.weights: file {weights} does not exist")
            elif weights is not None:
                try:
                    resolve_weights(spec["arch"], weights)
                except FeatdynError as exc:
                    raise FeatdynError(f"models.{name}.weights: {exc}") from None
            # A forward pass on the meta device (no weights; up to a second for a DenseNet) finds
            # unknown paths, modules called several times without @k and layers whose feature axis
            # cannot be decided (featdyn.nets.layouts) before any job runs; once per distinct
            # (arch, layers, layout): a grid of many models of a few architectures pays it once.
            try:
                layout = spec.get("layout")  # optional: no default (decided from the model)
                key = (spec["arch"], tuple(layers_of(config, name)), int(config["image_size"]), width, repr(layout))
                if key not in checked_layers:
                    layer_layouts(*key[:4], layout)
                    checked_layers.add(key)
            except FeatdynError as exc:
                raise FeatdynError(f"models.{name}.layers: {exc}") from None
            except Exception:  # noqa: BLE001 - a model the meta device cannot run is checked by its job
                pass
        attempt(model_checks)

    for name, spec in config["datasets"].items():
        def dataset_checks(name=name, spec=spec) -> None:
            kind = dataset_kind(name, spec)
            # url datasets are checked once unpacked (by the prepare step)
            for key in {"tree": ["path"], "pair": ["train", "test"]}.get(kind, []):
                fn = check_tree if key == "test" else check_training_tree
                attempt(fn, Path(base) / spec[key], f"datasets.{name}.{key}")
        attempt(dataset_checks)

    for metric in config["metrics"]:
        attempt(metric_params, config, metric)

    attempt(check_visualize, config)

    from featdyn.spec.recipes import check_recipes

    attempt(check_recipes, config)

    for model in config["models"]:
        for dataset in config["datasets"]:
            attempt(replicates_of, config, model, dataset)

    for model in config["models"]:
        for dataset in config["datasets"]:
            try:
                t = training_config(config, model, dataset)["epochs"]
            except KeyError:
                continue
            wanted = config["analysis"]["epochs"]
            if wanted != "all" and max(wanted) > t:
                problems.append(f"analysis.epochs: epoch {max(wanted)} is beyond training.epochs={t} "
                                f"for {model} x {dataset}")
    if problems:
        raise FeatdynError("invalid config:\n  - " + "\n  - ".join(dict.fromkeys(problems)))


def with_defaults(config: dict) -> dict:
    """A copy of ``config`` with every default of the workflow's schema filled in
    (:func:`featdyn.spec.schema.fill_defaults`): what the workflow does when it loads a config, for
    the tools and tests that read one without it. Every function here reads a filled config."""
    return fill_defaults(copy.deepcopy(config), load_schema(schema_path(REPO)))


# ---- the qualitative figures (the ``visualize`` block) -------------------------------------------

def visualize_block(config: dict) -> dict:
    """The ``visualize`` block (its defaults are the schema's, filled in with the config's)."""
    return config["visualize"]


def visual_epochs(config: dict, model: str, dataset: str) -> list[int]:
    """The columns of the patch and heatmap grids: epoch 0 (the source), then the analysed epochs
    that ``visualize.epochs`` keeps (all of them by default)."""
    analysed = analysed_epochs(config, model, dataset)
    wanted = visualize_block(config)["epochs"]
    if wanted == "all":
        return analysed
    return [0] + [e for e in analysed if e in set(wanted) and e != 0]


def rank_metric(config: dict) -> str | None:
    """The filter-granularity metric whose per-filter tables rank the filters (``visualize.rank_by``;
    ``auto``: the first one configured), or None to rank from the stores."""
    rank = visualize_block(config)["rank_by"]
    filters = [m for m in config["metrics"] if metric_params(config, m)["granularity"] == "filter"]
    if rank == "auto":
        return filters[0] if filters else None
    if rank == "stores":
        return None
    if rank not in filters:
        raise FeatdynError(f"visualize.rank_by: {rank!r} is not a filter-granularity metric of this config "
                           f"(those are {filters}); use auto, stores, or one of them")
    return rank


def check_visualize(config: dict) -> None:
    """The ``visualize`` block fits the models, metrics and epochs (filters and classes are checked
    against the stores and the prepared dataset by the job that chooses the units)."""
    from featdyn.report.units import resolve_layers

    block = visualize_block(config)
    rank_metric(config)
    wanted = block["epochs"]
    for model in config["models"]:
        layers = layers_of(config, model)
        for part in ("patches", "heatmaps"):
            try:
                chosen = resolve_layers(block[part]["layers"], layers, f"visualize.{part}.layers")
            except FeatdynError as exc:
                raise FeatdynError(f"{exc} (model {model!r})") from None
            filters = block[part]["filters"]
            if isinstance(filters, dict):
                missing = [layer for layer in chosen if layer not in filters]
                if missing:
                    raise FeatdynError(f"visualize.{part}.filters: no filters given for layers {missing} of model "
                                       f"{model!r} (given for {sorted(filters)})")
        if wanted != "all":
            for dataset in config["datasets"]:
                analysed = analysed_epochs(config, model, dataset)
                extra = sorted(set(wanted) - set(analysed))
                if extra:
                    raise FeatdynError(f"visualize.epochs: epochs {extra} are not analysed for {model} x {dataset} "
                                       f"(analysed: {analysed}; see analysis.epochs)")
