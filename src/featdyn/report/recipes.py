"""Fine-tuning recipes side by side: accuracy against distance to the source, and what the run says.

Model entries of the same architecture (and width) with different ``training`` blocks are recipes
of one architecture (:func:`recipe_groups`). Per (architecture, dataset, metric), :func:`recipe_table`
sets each recipe's test accuracy after the last epoch (Table 1) beside its distance to the source
model at that epoch: averaged over the analysed layers and per layer, each with its bootstrap
interval over the probe images, and its difference from full fine-tuning with the interval of the
difference (the same resamples on one dataset: paired). The last epoch, not the mean over epochs of
Table 2: a recipe is judged by the model it ends with.

:func:`recipe_findings` then answers, with the numbers, (f) whether LP-FT or freezing changes
features less than full fine-tuning, at what accuracy, and (g) whether the distance-proportional
recipe (``lr_from``) beats uniform fine-tuning in accuracy, in distance, in both or in neither. A
distance counts as lower only when the interval of the difference excludes 0; accuracies are single
numbers (one test split, one run): a higher accuracy is reported as it is, with its size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from featdyn.engine.bootstrap import Replicates
from featdyn.report.findings import FAILS, HOLDS, UNCHECKED, Case, Finding, RunNumbers, fmt, interval, with_interval
from featdyn.spec.recipe_names import FREEZE, FROZEN, FULL, LPFT, PROBE, PROPORTIONAL

RECIPE_COLUMNS = ["arch", "dataset", "metric", "model", "recipe", "epoch", "test_acc", "train_acc", "layer",
                  "layer_index", "distance", "ci_low", "ci_high", "diff_full", "diff_low", "diff_high"]
AVERAGE = "(layer average)"


def _full_entry(entries: Sequence[str], labels: Mapping[str, str]) -> str | None:
    return next((m for m in entries if labels[m] == FULL), None)


def recipe_table(accuracy: pd.DataFrame, scores: pd.DataFrame,
                 replicates: Mapping[tuple[str, str, str], Replicates],
                 groups: Mapping[str, Sequence[str]], labels: Mapping[str, Mapping[str, str]],
                 metrics: Sequence[str], level: float = 0.95, method: str = "centred") -> pd.DataFrame:
    """Columns :data:`RECIPE_COLUMNS`: per (arch, dataset, metric, model) one row for the layer
    average (``layer`` = :data:`AVERAGE`) and one per layer, at the entry's last analysed epoch.
    ``accuracy``: Table 1's tidy rows; ``labels[model][dataset]``: :func:`recipe_label`."""
    run = RunNumbers(scores, replicates, pd.DataFrame(), pd.DataFrame(), {}, [], metrics, level, method)
    last_acc = accuracy.loc[accuracy.groupby(["model", "dataset"])["epoch"].idxmax()].set_index(["model", "dataset"])
    rows = []
    for arch, entries in groups.items():
        for dataset in dict.fromkeys(scores["dataset"]):
            for metric in metrics:
                per_model = {m: _distances(run, metric, m, dataset) for m in entries}
                per_model = {m: v for m, v in per_model.items() if v is not None}
                full = _full_entry(list(per_model), {m: labels[m][dataset] for m in per_model})
                for model, (epoch, layers, values, reps) in per_model.items():
                    acc = last_acc.loc[(model, dataset)] if (model, dataset) in last_acc.index else None
                    for i, layer in enumerate([AVERAGE, *layers]):
                        point = values[i]
                        samples = reps[:, i] if reps is not None else None
                        lo, hi = interval(run, samples, point)
                        d = dlo = dhi = np.nan
                        if full is not None and model != full:
                            f_epoch, f_layers, f_values, f_reps = per_model[full]
                            if layer == AVERAGE or layer in f_layers:
                                j = 0 if layer == AVERAGE else 1 + f_layers.index(layer)
                                d = point - f_values[j]
                                if reps is not None and f_reps is not None:
                                    dlo, dhi = interval(run, reps[:, i] - f_reps[:, j], d)
                        rows.append({"arch": arch, "dataset": dataset, "metric": metric, "model": model,
                                     "recipe": labels[model][dataset], "epoch": epoch,
                                     "test_acc": float(acc["test_acc"]) if acc is not None else np.nan,
                                     "train_acc": float(acc["train_acc"]) if acc is not None else np.nan,
                                     "layer": layer, "layer_index": i - 1, "distance": point, "ci_low": lo,
                                     "ci_high": hi, "diff_full": d, "diff_low": dlo, "diff_high": dhi})
    return pd.DataFrame(rows, columns=RECIPE_COLUMNS)


def _distances(run: RunNumbers, metric: str, model: str, dataset: str):
    """(last epoch, layers, [average, per layer] values, (B, 1 + L) replicates or None), or None."""
    sc = run.scores
    sub = sc[(sc["metric"] == metric) & (sc["model"] == model) & (sc["dataset"] == dataset)]
    if sub.empty:
        return None
    epoch = int(sub["epoch"].max())
    last = sub[sub["epoch"] == epoch].sort_values("layer_index")
    layers = last["layer"].tolist()
    values = np.array([last["value"].mean(), *last["value"]], dtype=float)
    reps = run.reps(metric, model, dataset)
    samples = None
    if reps is not None and epoch in reps.epochs and all(layer in reps.layers for layer in layers):
        e = reps.epochs.index(epoch)
        per = reps.values[:, [reps.layers.index(layer) for layer in layers], e]
        with np.errstate(all="ignore"):
            samples = np.column_stack([np.nanmean(per, axis=1), per])
    return epoch, layers, values, samples


# -- rendering -------------------------------------------------------------------------------------

def recipe_layout(table: pd.DataFrame, arch: str, dataset: str, metric: str) -> pd.DataFrame:
    """One (arch, dataset, metric): recipes as rows; test accuracy, the layer-averaged distance and
    each layer's, 'd [lo, hi]', and the average's difference from full fine-tuning."""
    sub = table[(table["arch"] == arch) & (table["dataset"] == dataset) & (table["metric"] == metric)]
    out = {}
    for model, g in sub.groupby("model", sort=False):
        avg = g[g["layer"] == AVERAGE].iloc[0]
        row = {"recipe": avg["recipe"], "test acc (%)": fmt_acc(avg["test_acc"]),
               "distance (layer average)": with_interval(avg["distance"], avg["ci_low"], avg["ci_high"]),
               "minus full": with_interval(avg["diff_full"], avg["diff_low"], avg["diff_high"])
               if np.isfinite(avg["diff_full"]) else "-"}
        for r in g[g["layer"] != AVERAGE].itertuples():
            row[r.layer] = with_interval(r.distance, r.ci_low, r.ci_high)
        out[model] = row
    df = pd.DataFrame.from_dict(out, orient="index")
    df.index.name = "model"
    return df


def fmt_acc(x: float) -> str:
    return f"{x:.2f}" if np.isfinite(x) else "n/a"


def recipe_caption(table: pd.DataFrame, arch: str, dataset: str, metric: str, interval_text: str) -> str:
    sub = table[(table["arch"] == arch) & (table["dataset"] == dataset) & (table["metric"] == metric)]
    epochs = ", ".join(str(e) for e in sorted(set(sub["epoch"])))
    return (f"Recipes of {arch} on {dataset} ({metric}): test accuracy after the last epoch (Table 1) and the "
            f"distance to the source model at that epoch (epoch {epochs}), averaged over the analysed layers and "
            f"per layer (early to deep); 'minus full': the recipe's layer-averaged distance minus full "
            f"fine-tuning's, paired over the same resampled images. [low, high]: {interval_text}. Lower is "
            f"closer to the source model.")


# -- findings --------------------------------------------------------------------------------------

def _avg(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["layer"] == AVERAGE]


def _lower(row) -> str:
    """Whether the recipe's distance is below full fine-tuning's: the difference and its interval."""
    if not np.isfinite(row["diff_full"]):
        return UNCHECKED
    if np.isfinite(row["diff_low"]):
        return HOLDS if row["diff_full"] < 0 and row["diff_high"] < 0 else FAILS
    return HOLDS if row["diff_full"] < 0 else FAILS


def _vs_full(row, full) -> str:
    acc = row["test_acc"] - full["test_acc"]
    return (f"{row['model']} ({row['recipe']}) {fmt(row['distance'])}, full fine-tuning ({full['model']}) "
            f"{fmt(full['distance'])}: difference {with_interval(row['diff_full'], row['diff_low'], row['diff_high'])}; "
            f"test accuracy {fmt_acc(row['test_acc'])}% against {fmt_acc(full['test_acc'])}% "
            f"({acc:+.2f} points)")


def _pairs(table: pd.DataFrame):
    """(subject, recipe row, full fine-tuning row) of every recipe compared with full fine-tuning."""
    avg = _avg(table)
    for (arch, dataset, metric), g in avg.groupby(["arch", "dataset", "metric"], sort=False):
        full = g[g["recipe"] == FULL]
        for _, row in g.iterrows():
            if row["recipe"] != FULL:
                yield f"{arch} × {dataset} × {metric} × {row['model']}", row, (full.iloc[0] if len(full) else None)


def check_preserving(table: pd.DataFrame) -> Finding:
    """(f) LP-FT and freezing change features less than full fine-tuning (Kumar et al. 2022)."""
    f = Finding("f", "LP-FT and freezing change features less than full fine-tuning",
                "(not this paper's claim, Kumar et al. 2022's) linear probing then fine-tuning distorts pretrained "
                "features less than full fine-tuning",
                "per architecture, dataset and metric: the layer-averaged distance to the source at the last epoch "
                "of each LP-FT, linear-probe or freezing recipe minus that of full fine-tuning (the entry of the "
                "same architecture without recipe options), with the interval of the difference; it holds when the "
                "difference is negative and its interval excludes 0. The test accuracies stand beside it")
    for subject, row, full in _pairs(table):
        if not any(k in row["recipe"] for k in (LPFT, PROBE, FROZEN, FREEZE)):
            continue
        if full is None:
            f.cases.append(Case(subject, UNCHECKED, "no full fine-tuning entry of this architecture"))
            continue
        f.cases.append(Case(subject, _lower(row), _vs_full(row, full)))
    if not f.cases:
        f.note = "no LP-FT, linear-probe or freezing recipe beside full fine-tuning in this run"
    return f


def check_proportional(table: pd.DataFrame) -> Finding:
    """(g) The paper's proposal: does the distance-proportional recipe beat uniform fine-tuning?"""
    f = Finding("g", "The distance-proportional recipe beats uniform fine-tuning",
                "\"fine-tuning could be applied on the layers in proportion to their depth location and similarity "
                "rate to the source domain\" (Conclusion)",
                "per architecture, dataset and metric: the lr_from recipe against full fine-tuning with one "
                "learning rate. In accuracy: a higher test accuracy after the last epoch (one test split: no "
                "interval). In distance: a lower layer-averaged distance to the source whose difference interval "
                "excludes 0. It holds where the recipe beats uniform fine-tuning in accuracy, in distance or in "
                "both (each case says which), and does not hold where it beats it in neither")
    for subject, row, full in _pairs(table):
        if PROPORTIONAL not in row["recipe"]:
            continue
        if full is None:
            f.cases.append(Case(subject, UNCHECKED, "no full fine-tuning entry of this architecture"))
            continue
        in_acc = bool(np.isfinite(row["test_acc"]) and row["test_acc"] > full["test_acc"])
        in_dist = _lower(row) == HOLDS
        which = {(True, True): "both accuracy and distance", (True, False): "accuracy only",
                 (False, True): "distance only", (False, False): "neither accuracy nor distance"}[(in_acc, in_dist)]
        f.cases.append(Case(subject, HOLDS if in_acc or in_dist else FAILS,
                            f"beats uniform fine-tuning in {which}: {_vs_full(row, full)}"))
    if not f.cases:
        f.note = "no distance-proportional (lr_from) recipe beside full fine-tuning in this run"
    return f


def recipe_findings(table: pd.DataFrame) -> list[Finding]:
    return [check_preserving(table), check_proportional(table)]
