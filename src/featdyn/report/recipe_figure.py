"""The recipe figure (results/figures/recipes.*): per (architecture, dataset), test accuracy against
the layer-averaged distance to the source, and every recipe's per-layer distances, with intervals.
Drawn from the recipe table (:func:`featdyn.report.recipes.recipe_table`); its own module so that
the findings, which read the same table, do not track the plotting code."""

from __future__ import annotations

import numpy as np
import pandas as pd

from featdyn.report.recipes import AVERAGE


def recipe_figure(table: pd.DataFrame, metric: str, png: str, pdf: str | None = None) -> None:
    """Per (arch, dataset), two panels: test accuracy against the layer-averaged distance (error
    bars: the intervals), and every recipe's per-layer distance with its interval band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from featdyn.report.figures import STYLE, save_figure

    sub = table[table["metric"] == metric]
    panels = list(dict.fromkeys(zip(sub["arch"], sub["dataset"])))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(panels), 2, figsize=(6.8, 2.3 * max(len(panels), 1)), squeeze=False)
        for (arch, dataset), (left, right) in zip(panels, axes):
            p = sub[(sub["arch"] == arch) & (sub["dataset"] == dataset)]
            colours = dict(zip(dict.fromkeys(p["model"]), plt.cm.tab10.colors))
            for model, g in p.groupby("model", sort=False):
                avg = g[g["layer"] == AVERAGE].iloc[0]
                label = f"{model}: {avg['recipe']}"
                err = None
                if np.isfinite(avg["ci_low"]):
                    err = [[avg["distance"] - avg["ci_low"]], [avg["ci_high"] - avg["distance"]]]
                left.errorbar([avg["distance"]], [avg["test_acc"]], xerr=err, fmt="o", ms=4, capsize=2,
                              color=colours[model], label=label)
                layers = g[g["layer"] != AVERAGE]
                x = np.arange(len(layers))
                right.plot(x, layers["distance"], "-o", ms=3, lw=1, color=colours[model], label=label)
                if np.isfinite(layers["ci_low"]).all():
                    right.fill_between(x, layers["ci_low"], layers["ci_high"], color=colours[model], alpha=0.2, lw=0)
                right.set_xticks(x, layers["layer"], rotation=30, ha="right")
            left.set_xlabel(f"distance to source, layer average ({metric})")
            left.set_ylabel("test accuracy (%)")
            left.set_title(f"{arch} on {dataset}: accuracy against distance")
            right.set_ylabel(f"distance ({metric})")
            right.set_title(f"{arch} on {dataset}: per layer, last epoch")
            left.legend(loc="best", frameon=False)
        fig.tight_layout()
        save_figure(fig, png, pdf)
        plt.close(fig)
