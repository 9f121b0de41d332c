"""The paper's figures: similarity curves per model (one panel per metric, colour per dataset)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .atomic import atomic_path  # noqa: E402

METRIC_LABELS = {"procrustes": "Orthogonal Procrustes (1 - ||X*ᵀY*||*)", "pwsm": "PWSM angle (rad)",
                 "cka": "1 - linear CKA", "cca": "CCA angle (rad)"}


def similarity_curves(scores: pd.DataFrame, model: str, out: str | os.PathLike) -> None:
    """Distance against epoch for every layer of ``model``: panels = metrics, hue = dataset,
    line lightness = depth (light = early layer, dark = deep layer), as in the paper's Figs. 2-4."""
    sc = scores[scores["model"] == model]
    metrics = list(dict.fromkeys(sc["metric"]))
    datasets = list(dict.fromkeys(sc["dataset"]))
    palettes = ["Blues", "Oranges", "Reds", "Greens", "Purples", "Greys"]
    # At most three panels a row: four or more metrics wrap instead of making a strip.
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, metrics):
        sub = sc[sc["metric"] == metric]
        for di, dataset in enumerate(datasets):
            d = sub[sub["dataset"] == dataset]
            layers = d.drop_duplicates("layer").sort_values("layer_index")["layer"].tolist()
            colours = sns.color_palette(palettes[di % len(palettes)], len(layers) + 2)[2:]
            for li, layer in enumerate(layers):
                ld = d[d["layer"] == layer].sort_values("epoch")
                ax.plot(ld["epoch"], ld["value"], marker="o", ms=3, color=colours[li], label=f"{dataset} {layer}")
        kind = sub["kind"].iloc[0] if len(sub) else metric
        ax.set_title(f"{metric}")
        ax.set_xlabel("epoch (0 = source model)")
        ax.set_ylabel(METRIC_LABELS.get(kind, kind) + ("" if sub["granularity"].iloc[0] == "layer"
                                                        else " [per filter]"))
        ax.set_xticks(np.unique(sub["epoch"]))
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False,
               title="dataset / layer (early → deep)")
    fig.suptitle(f"{model}: distance to the source model during fine-tuning")
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
