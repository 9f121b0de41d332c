"""The config side of fine-tuning recipes: their check before any job runs, the reference run of
``lr_from`` and which epochs read its score file. Torch-free (runs at every parse), except the
check, which builds each model on the meta device to check module paths (main process only)."""

from __future__ import annotations

from featdyn import FeatdynError
from featdyn.spec.hyperparams import probing


def reference(training: dict) -> dict | None:
    """The resolved ``lr_from`` block of a training block (spec.config.training_config), or None."""
    return training.get("lr_from") or None


def reads_reference(training: dict, epoch: int) -> bool:
    """Whether epoch ``epoch`` sets its learning rates from the reference run's distances: every
    epoch >= 1 of an lr_from entry, except LP-FT's probe epochs (the head alone, at the base lr)."""
    return epoch >= 1 and reference(training) is not None and not probing(training, epoch)


def check_recipes(config: dict) -> None:
    """Recipe options fit the models, metrics and epochs; lr_from references form no cycle."""
    from featdyn.spec.config import analysed_epochs, metric_params
    from featdyn.spec.hyperparams import training_config

    problems: list[str] = []
    models = config["models"]
    refs: dict[str, set[str]] = {}
    for model, spec in models.items():
        for dataset in config["datasets"]:
            where = f"training (model {model!r}, dataset {dataset!r})"
            t = training_config(config, model, dataset)
            m = t.get("probe_epochs") or 0
            if m > t["epochs"]:
                problems.append(f"{where}.probe_epochs: {m} is beyond epochs={t['epochs']}")
            layer_lr = t.get("layer_lr")
            if layer_lr and "decay" in layer_lr and len(layer_lr) > 1:
                problems.append(f"{where}.layer_lr: give either decay or multipliers per module path, not both")
            ref = reference(t)
            if ref is None:
                continue
            if layer_lr:
                problems.append(f"{where}: give either layer_lr or lr_from, not both (lr_from sets every layer's rate)")
            other = ref["model"]
            refs.setdefault(model, set()).add(other)
            if other not in models:
                problems.append(f"{where}.lr_from.model: {other!r} is no model entry (entries: {sorted(models)})")
                continue
            if other == model:
                problems.append(f"{where}.lr_from.model: a model cannot take its rates from its own run")
                continue
            mine, theirs = (spec["arch"], spec.get("width", 1.0)), (models[other]["arch"], models[other].get("width", 1.0))
            if mine != theirs:
                problems.append(f"{where}.lr_from.model: {other!r} is {theirs[0]} at width {theirs[1]}, this entry "
                                f"{mine[0]} at width {mine[1]}: the reference must be the same architecture")
            metric = ref["metric"]
            if metric not in (config.get("metrics") or {}):
                problems.append(f"{where}.lr_from.metric: {metric!r} is no metric of this config "
                                f"(metrics: {sorted(config.get('metrics') or {})})")
            else:
                try:
                    metric_params(config, metric)
                except FeatdynError:
                    pass  # reported by the metric's own check
            if ref["epoch"] != "last":
                analysed = analysed_epochs(config, other, dataset)
                if ref["epoch"] not in analysed or ref["epoch"] < 1:
                    problems.append(f"{where}.lr_from.epoch: epoch {ref['epoch']} is not an analysed epoch >= 1 "
                                    f"of {other!r} on {dataset!r} (analysed: {analysed})")
            if not 0 < ref["floor"] <= 1:
                problems.append(f"{where}.lr_from.floor: expected a number in (0, 1], got {ref['floor']}")
    for start in refs:  # a cycle would make the DAG wait on itself
        seen, todo = set(), [start]
        while todo:
            for nxt in refs.get(todo.pop(), ()):
                if nxt == start:
                    problems.append(f"training.lr_from: model entries reference each other in a cycle through {start!r}")
                    todo = []
                    break
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
    problems += _check_paths(config)
    if problems:
        raise FeatdynError("\n  - ".join(dict.fromkeys(problems)))


def _check_paths(config: dict) -> list[str]:
    """Module-path prefixes of ``freeze`` and ``layer_lr`` exist in their model (meta device)."""
    from featdyn.nets.models import construct
    from featdyn.nets.recipes import check_prefixes
    from featdyn.spec.hyperparams import training_config

    problems = []
    built: dict[tuple, object] = {}
    for model, spec in config["models"].items():
        for dataset in config["datasets"]:
            t = training_config(config, model, dataset)
            wanted = {"freeze": t.get("freeze") if isinstance(t.get("freeze"), list) else [],
                      "layer_lr": [k for k in (t.get("layer_lr") or {}) if k != "decay"]}
            if not any(wanted.values()):
                continue
            key = (spec["arch"], spec.get("width", 1.0))
            try:
                if key not in built:
                    built[key] = construct(*key, meta=True)
                for name, prefixes in wanted.items():
                    check_prefixes(built[key], prefixes, f"training.{name} (model {model!r}, dataset {dataset!r})")
            except FeatdynError as exc:
                problems.append(str(exc))
    return problems
