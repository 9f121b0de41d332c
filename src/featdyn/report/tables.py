"""The paper's tables from the per-epoch metrics rows and the tidy score tables.

- Table 1: train / test accuracy per (model, dataset, epoch); the paper's layout shows the last one.
- Table 2 ("reusability"): per (model, dataset, metric), the distance averaged over layers at each
  epoch, then its mean and standard deviation (sample, ddof=1) over epochs 1..T. The paper gives no
  code for it; this is the reading of its Sec. 3.2 that we implement. Epoch 0 is the source model
  itself (distance 0) and is excluded. Beside mean and std: a bootstrap interval over the probe
  images (:mod:`featdyn.engine.bootstrap`), ``ci_low`` and ``ci_high``. The std says how much the
  distance moves across epochs; the interval says how much of the mean is the choice of images.
- The per-layer breakdown of Table 2: the same summary for every layer.
- Metric agreement: the Pearson (and Spearman) correlation of two metrics, in two readings
  (:mod:`featdyn.report.correlation`).

Every layout (models as rows, datasets as columns, in the config's order) renders to Markdown,
LaTeX (booktabs, a ``table`` float ready to ``\\input``) and HTML (the report), with the best entry
per dataset in bold when two or more models compete for it.
"""

from __future__ import annotations

import html
import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from featdyn import FeatdynError
from featdyn.engine.bootstrap import Replicates, bias_free_mean

TABLE2_COLUMNS = ["model", "dataset", "metric", "mean", "std", "ci_low", "ci_high", "bias", "epochs", "epoch_list",
                  "granularity"]
LAYER_COLUMNS = ["model", "dataset", "metric", "granularity", "layer", "layer_index", "mean", "std", "ci_low",
                 "ci_high", "bias", "epochs", "epoch_list"]

READINGS = {
    "layer": "layer reading: the observations are a layer's (image, y, x) positions, the features its channels",
    "filter": "filter reading (the authors' code): each filter's H x W map per image, averaged over the images "
              "of a class, then over the classes and the filters",
}


def read_epoch_rows(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Per-epoch metrics rows (JSON files written by the fine-tuning jobs) as one table."""
    rows = []
    for p in paths:
        try:
            rows.append(json.loads(open(p).read()))
        except (OSError, json.JSONDecodeError) as exc:
            raise FeatdynError(f"cannot read epoch metrics {p}: {exc}") from exc
    cols = ["model", "dataset", "epoch", "train_loss", "train_acc", "test_loss", "test_acc"]
    return pd.DataFrame(rows)[cols].sort_values(["model", "dataset", "epoch"]).reset_index(drop=True)


def _grid(cells: pd.DataFrame, values: str, models: Sequence[str] | None,
          datasets: Sequence[str] | None) -> pd.DataFrame:
    """models x datasets grid of column ``values``, in the given (config) order, else sorted."""
    table = cells.pivot(index="model", columns="dataset", values=values).rename_axis(None, axis=1)
    return table.reindex(index=list(models or table.index), columns=list(datasets or table.columns))


def _best(scores: pd.DataFrame, lowest: bool) -> pd.DataFrame:
    """True at the best finite entry of each column (lowest or highest), when two or more compete."""
    out = pd.DataFrame(False, index=scores.index, columns=scores.columns)
    for col in scores.columns:
        s = pd.to_numeric(scores[col], errors="coerce")
        if s.notna().sum() >= 2:
            out.loc[s.idxmin() if lowest else s.idxmax(), col] = True
    return out


def last_epoch(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.loc[rows.groupby(["model", "dataset"])["epoch"].idxmax()]


def table1(rows: pd.DataFrame, models: Sequence[str] | None = None,
           datasets: Sequence[str] | None = None) -> pd.DataFrame:
    """Table 1 in the paper's layout: models x datasets, 'train / test' accuracy of the last epoch.

    ``models`` and ``datasets`` give the row and column order (the config's order; the paper lists
    VGG19, DenseNet121, ResNet50 x 15-Scene, AwA2, Fruits); by default they are sorted.
    """
    last = last_epoch(rows)
    cell = last.assign(cell=[f"{a:.2f} / {b:.2f}" for a, b in zip(last["train_acc"], last["test_acc"])])
    return _grid(cell, "cell", models, datasets)


def table1_best(rows: pd.DataFrame, models: Sequence[str] | None = None,
                datasets: Sequence[str] | None = None) -> pd.DataFrame:
    """Where Table 1 is best: the highest test accuracy of each dataset (among two or more models)."""
    return _best(_grid(last_epoch(rows), "test_acc", models, datasets), lowest=False)


def table1_caption(rows: pd.DataFrame) -> str:
    epochs = sorted(set(last_epoch(rows)["epoch"]))
    return (f"Table 1: train / test accuracy (%) after the last epoch (epoch {', '.join(map(str, epochs))}); "
            f"train accuracy is the running accuracy of that epoch's training pass. Bold: the highest test "
            f"accuracy on each dataset.")


def layer_average(scores: pd.DataFrame) -> pd.DataFrame:
    """Distance averaged over layers, per (model, dataset, metric, epoch)."""
    keys = ["model", "dataset", "metric", "epoch"]
    return scores.groupby(keys, as_index=False)["value"].mean()


def _epoch_list(epochs: Iterable[int]) -> str:
    e = sorted({int(x) for x in epochs})
    if len(e) > 2 and e == list(range(e[0], e[-1] + 1)):
        return f"{e[0]}..{e[-1]}"
    return ", ".join(map(str, e))


def _interval(reps: Replicates | None, reduce, point: float) -> tuple[float, float, float]:
    """(ci_low, ci_high, bias) of the estimate ``point`` whose replicates are ``reduce(reps)``."""
    if reps is None or not reps.resamples:
        return np.nan, np.nan, np.nan
    samples = reduce(reps)
    lo, hi = reps.interval(samples, point)
    return float(lo), float(hi), float(bias_free_mean(samples) - point)


def table2(scores: pd.DataFrame, replicates: Mapping[tuple[str, str, str], Replicates] | None = None
           ) -> pd.DataFrame:
    """Reusability: mean and sample std (ddof=1) over epochs >= 1 of the layer-averaged distance,
    with the bootstrap interval of that mean from ``replicates[(metric, model, dataset)]`` and the
    replicates' bias (their mean minus the estimate; NaN without replicates). Columns
    :data:`TABLE2_COLUMNS`."""
    avg = layer_average(scores)
    avg = avg[avg["epoch"] >= 1]
    if avg.empty:
        raise FeatdynError("table 2 needs scores of at least one epoch >= 1")
    out = avg.groupby(["model", "dataset", "metric"], sort=False)["value"].agg(["mean", "std", "count"]).reset_index()
    out = out.rename(columns={"count": "epochs"})
    lists = avg.groupby(["model", "dataset", "metric"], sort=False)["epoch"].agg(_epoch_list)
    gran = scores.groupby(["model", "dataset", "metric"], sort=False)["granularity"].first() \
        if "granularity" in scores else None
    rows = []
    for r in out.itertuples(index=False):
        key = (r.metric, r.model, r.dataset)
        lo, hi, bias = _interval((replicates or {}).get(key), Replicates.table2, r.mean)
        rows.append({**r._asdict(), "ci_low": lo, "ci_high": hi, "bias": bias,
                     "epoch_list": lists[(r.model, r.dataset, r.metric)],
                     "granularity": gran[(r.model, r.dataset, r.metric)] if gran is not None else "layer"})
    return pd.DataFrame(rows, columns=TABLE2_COLUMNS)


def _fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if np.isfinite(x) else "n/a"


def summary_cell(mean: float, std: float, lo: float = np.nan, hi: float = np.nan) -> str:
    """'mean ± std [lo, hi]' (the std and the interval only where defined)."""
    cell = _fmt(mean) + (f" ± {_fmt(std)}" if np.isfinite(std) else "")
    return cell + (f" [{_fmt(lo)}, {_fmt(hi)}]" if np.isfinite(lo) and np.isfinite(hi) else "")


def _cells(df: pd.DataFrame) -> list[str]:
    return [summary_cell(m, s, lo, hi) for m, s, lo, hi in zip(df["mean"], df["std"], df["ci_low"], df["ci_high"])]


def table2_layout(t2: pd.DataFrame, metric: str, models: Sequence[str] | None = None,
                  datasets: Sequence[str] | None = None) -> pd.DataFrame:
    """Table 2 in the paper's layout for one metric: models x datasets, 'mean ± std [ci_low,
    ci_high]', rows and columns in the given (config) order as in :func:`table1`."""
    sub = t2[t2["metric"] == metric]
    if "ci_low" not in sub:
        sub = sub.assign(ci_low=np.nan, ci_high=np.nan)
    return _grid(sub.assign(cell=_cells(sub)), "cell", models, datasets)


def table2_best(t2: pd.DataFrame, metric: str, models: Sequence[str] | None = None,
                datasets: Sequence[str] | None = None) -> pd.DataFrame:
    """Where Table 2 is best: the lowest mean distance of each dataset (the most reused features;
    the paper bolds ResNet50 on Fruits), among two or more models."""
    return _best(_grid(t2[t2["metric"] == metric], "mean", models, datasets), lowest=True)


def table2_caption(t2: pd.DataFrame, metric: str, interval: str) -> str:
    """What a Table 2 shows: which epochs, which std, which reading, which interval."""
    sub = t2[t2["metric"] == metric]
    epochs = "; ".join(sorted(set(sub["epoch_list"]))) if "epoch_list" in sub else "1..T"
    gran = sub["granularity"].iloc[0] if "granularity" in sub and len(sub) else "layer"
    return (f"Table 2 ({metric}): mean ± sample std (ddof = 1) over epochs {epochs} (epoch 0, the source model, "
            f"excluded) of the distance averaged over the analysed layers; {READINGS.get(gran, gran)}. "
            f"[low, high]: {interval} of that mean. Bold: the lowest distance on each dataset (the features "
            f"reused most), as the paper marks it. Lower is closer to the source model.")


def table2_layers(scores: pd.DataFrame, replicates: Mapping[tuple[str, str, str], Replicates] | None = None
                  ) -> pd.DataFrame:
    """The per-layer breakdown of Table 2: per (model, dataset, metric, layer), mean and sample std
    over epochs >= 1 of the layer's distance, with its bootstrap interval. Columns :data:`LAYER_COLUMNS`."""
    sc = scores[scores["epoch"] >= 1]
    if sc.empty:
        raise FeatdynError("the per-layer table needs scores of at least one epoch >= 1")
    keys = ["model", "dataset", "metric", "granularity", "layer", "layer_index"]
    out = sc.groupby(keys, sort=False)["value"].agg(["mean", "std", "count"]).reset_index()
    out["epoch_list"] = sc.groupby(keys, sort=False)["epoch"].agg(_epoch_list).to_numpy()
    out = out.rename(columns={"count": "epochs"})
    intervals = []
    for r in out.itertuples(index=False):
        reps = (replicates or {}).get((r.metric, r.model, r.dataset))
        if reps is not None and reps.resamples and r.layer in reps.layers:
            i = reps.layers.index(r.layer)
            intervals.append(_interval(reps, lambda x, i=i: x.per_layer()[:, i], r.mean))
        else:
            intervals.append((np.nan, np.nan, np.nan))
    out["ci_low"], out["ci_high"], out["bias"] = np.array(intervals, dtype=float).reshape(-1, 3).T
    return out.sort_values(["model", "metric", "layer_index"], kind="stable", ignore_index=True)[LAYER_COLUMNS]


def table2_layers_layout(layers: pd.DataFrame, model: str, metric: str,
                         datasets: Sequence[str] | None = None) -> pd.DataFrame:
    """One model and metric: layers (early to deep) x datasets, 'mean ± std [ci_low, ci_high]'."""
    sub = layers[(layers["model"] == model) & (layers["metric"] == metric)]
    order = sub.drop_duplicates("layer").sort_values("layer_index")["layer"].tolist()
    table = sub.assign(cell=_cells(sub)).pivot(index="layer", columns="dataset", values="cell")
    return table.rename_axis(None, axis=1).reindex(index=order, columns=list(datasets or table.columns))


def table2_layers_caption(metric: str, model: str, granularity: str, epochs: str, interval: str) -> str:
    return (f"Table 2 per layer ({model}, {metric}): for each layer (early to deep), mean ± sample std "
            f"(ddof = 1) over epochs {epochs} of its distance to the source model; "
            f"{READINGS.get(granularity, granularity)}. "
            f"[low, high]: {interval}.")


# -- renderers -------------------------------------------------------------------------------------

def _frame(df: pd.DataFrame, best: pd.DataFrame | None) -> tuple[list[str], list[str], list[list[tuple[str, bool]]]]:
    """(corner + column names, row names, cells as (text, bold)); NaN cells render as '-'."""
    rows = []
    for i in range(len(df)):
        rows.append([("-" if not isinstance(v, str) and pd.isna(v) else str(v),
                      bool(best is not None and best.iat[i, j])) for j, v in enumerate(df.iloc[i])])
    return [df.index.name or "", *map(str, df.columns)], [str(r) for r in df.index], rows


def to_markdown(df: pd.DataFrame, title: str, best: pd.DataFrame | None = None, caption: str | None = None) -> str:
    """A plain Markdown table (no extra dependency): a '### title' heading, the table with bold
    (``**``) where ``best`` is True, then the caption."""
    header, names, rows = _frame(df, best)
    head = "| " + " | ".join(header) + " |"
    sep = "|" + "|".join("---" for _ in header) + "|"
    body = ["| " + " | ".join([name] + [f"**{t}**" if b else t for t, b in row]) + " |"
            for name, row in zip(names, rows)]
    return "\n".join([f"### {title}", "", head, sep, *body, "", *([caption, ""] if caption else [])])


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    out = "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    return out.replace("±", r"$\pm$").replace("×", r"$\times$")


def to_latex(df: pd.DataFrame, caption: str, label: str, best: pd.DataFrame | None = None) -> str:
    """A booktabs ``table`` float (needs ``\\usepackage{booktabs}``), ready to ``\\input``; bold
    (``\\textbf``) where ``best`` is True."""
    header, names, rows = _frame(df, best)
    lines = [r"\begin{table}[tbp]", r"\centering", rf"\caption{{{latex_escape(caption)}}}",
             rf"\label{{{label}}}", r"\begin{tabular}{l" + "c" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    for name, row in zip(names, rows):
        cells = [rf"\textbf{{{latex_escape(t)}}}" if b else latex_escape(t) for t, b in row]
        lines.append(" & ".join([latex_escape(name), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def to_html(df: pd.DataFrame, title: str, best: pd.DataFrame | None = None, caption: str | None = None) -> str:
    """An HTML fragment: heading, table (bold where ``best``), caption."""
    header, names, rows = _frame(df, best)
    esc = html.escape
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
    body = ["<tr><th>" + esc(name) + "</th>" + "".join(f"<td><b>{esc(t)}</b></td>" if b else f"<td>{esc(t)}</td>"
                                                      for t, b in row) + "</tr>" for name, row in zip(names, rows)]
    cap = f"<p class='caption'>{esc(caption)}</p>" if caption else ""
    return f"<h3>{esc(title)}</h3>\n<table>\n{head}\n" + "\n".join(body) + f"\n</table>\n{cap}\n"


HTML_STYLE = ("body{font-family:sans-serif;margin:1.5em;color:#222} table{border-collapse:collapse;margin:.5em 0} "
              "th,td{border-top:1px solid #bbb;border-bottom:1px solid #bbb;padding:.3em .8em;text-align:center} "
              "th:first-child{text-align:left} .caption{max-width:60em;font-size:90%;color:#444}")


def html_page(title: str, fragments: Iterable[str]) -> str:
    """A self-contained HTML page (the report shows HTML files inline)."""
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{HTML_STYLE}</style></head><body>\n" + "\n".join(fragments) + "</body></html>\n")


def frame_table(df: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """A tidy frame for the renderers: numbers formatted, NaN as '-', indexed by its first column."""
    out = df.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            out[col] = [_fmt(v, digits) if np.isfinite(v) else "-" for v in out[col]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return out.set_index(out.columns[0])
