"""The paper's figures, drawn from tables and arrays (no store or model access here):

- :func:`similarity_curves`: distance to the source model per layer and epoch (Figs. 2-4);
- :func:`patch_grid`: class-average input patterns per (class, layer, filter) and epoch (Figs. 5-6);
- :func:`heatmap_grid`: a filter's map over a sample image per (image, layer, filter) and epoch
  (Figs. 7-8), one colour scale per row.

Every figure is drawn at the size it is meant to be printed (7 pt text; a grid with four epoch
columns is about one journal column wide) and saved as PNG and PDF (:func:`save_figure`). A
dataset has the same colour family in every figure: the config's dataset order picks it
(:func:`dataset_colour`). Grids record their layout (rows, columns, the panels' pixel box) in the
PNG's text metadata under ``featdyn:grid``.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from featdyn.atomic import atomic_path  # noqa: E402

METRIC_LABELS = {"procrustes": "Procrustes 1 - ||X*ᵀY*||*", "pwsm": "PWSM angle (rad)",
                 "cka": "1 - linear CKA", "cca": "CCA angle (rad)"}
PALETTES = ["Blues", "Oranges", "Reds", "Greens", "Purples", "Greys"]
LOWER = "lower = more similar"
DPI = 200
HEATMAP_CMAP = "inferno"
# Print sizes: 7 pt text, TrueType fonts in the PDF (editable, no Type 3).
STYLE = {"font.size": 7, "axes.titlesize": 7, "axes.labelsize": 7, "xtick.labelsize": 6, "ytick.labelsize": 6,
         "legend.fontsize": 6.5, "legend.title_fontsize": 7, "pdf.fonttype": 42, "ps.fonttype": 42,
         "axes.linewidth": 0.6, "savefig.facecolor": "white"}
CELL_IN, GAP_IN = 0.62, 0.05   # a grid panel and the gap between panels, inches


def dataset_colours(datasets: Sequence[str]) -> dict[str, str]:
    """The colour family (a matplotlib sequential colormap) of each dataset, by position."""
    return {d: PALETTES[i % len(PALETTES)] for i, d in enumerate(datasets)}


def _palette(family: str, n: int) -> list[tuple[float, float, float]]:
    """``n`` evenly spaced colours of a sequential colormap, its two ends left out (what seaborn's
    color_palette gives; matplotlib alone spares each figure job seaborn's scipy import)."""
    return [tuple(c[:3]) for c in matplotlib.colormaps[family](np.linspace(0, 1, n + 2)[1:-1])]


def dataset_colour(dataset: str, datasets: Sequence[str] | None = None) -> tuple[float, float, float]:
    """One strong shade of ``dataset``'s family: its legend colour in the similarity curves and its
    title colour in the patch and heatmap grids."""
    datasets = list(datasets or [dataset])
    family = dataset_colours(datasets).get(dataset, PALETTES[-1])
    return _palette(family, 6)[4]


def _shades(family: str, n: int) -> list:
    """``n`` shades of ``family`` from light (early layer) to dark (deep layer), the lightest skipped."""
    return _palette(family, n + 2)[2:]


def save_figure(fig: plt.Figure, png: str | os.PathLike, pdf: str | os.PathLike | None = None,
                grid: dict | None = None) -> None:
    """Write ``fig`` as PNG (``DPI``) and, if given, PDF, each under a temporary name then renamed."""
    meta = {"Software": "featdyn"} | ({"featdyn:grid": json.dumps(grid)} if grid else {})
    with atomic_path(png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=DPI, format="png", metadata=meta)
    if pdf is not None:
        with atomic_path(pdf, suffix=".pdf") as tmp:
            fig.savefig(tmp, format="pdf", metadata={"Creator": "featdyn"})
    plt.close(fig)


# ---- similarity curves (Figs. 2-4) ------------------------------------------------------------------

def _panel_shape(n: int) -> tuple[int, int]:
    """Rows and columns for ``n`` panels: one row up to three, 2 x 2 for four, then rows of three."""
    if n <= 3:
        return 1, n
    if n == 4:
        return 2, 2
    return -(-n // 3), 3


def similarity_curves(scores: pd.DataFrame, model: str, out: str | os.PathLike,
                      pdf: str | os.PathLike | None = None, datasets: Sequence[str] | None = None) -> plt.Figure:
    """Distance against epoch for every layer of ``model``, as in the paper's Figs. 2-4: one panel
    per metric, one colour family per dataset, light (early layer) to dark (deep layer). A
    confidence band is drawn where the table has finite ``ci_low`` / ``ci_high``. Free grid cells
    hold the legends, so no panel is empty; written to ``out`` (PNG) and ``pdf``. Returns the
    figure (closed)."""
    sc = scores[scores["model"] == model]
    metrics = list(dict.fromkeys(sc["metric"]))
    present = set(sc["dataset"])
    datasets = [d for d in (datasets or dict.fromkeys(sc["dataset"])) if d in present]
    families = dataset_colours(datasets)
    layers = sc.drop_duplicates("layer").sort_values(["layer_index", "layer"])["layer"].tolist()
    bands = {"ci_low", "ci_high"} <= set(sc.columns)
    nrows, ncols = _panel_shape(len(metrics))
    spare = nrows * ncols - len(metrics)
    with plt.rc_context(STYLE):
        # The legends go in the free cells of the last row, or else in a column of their own: inside
        # the grid, so that the title above and the panels beside never overlap them.
        fig = plt.figure(figsize=(2.7 * ncols + (0 if spare else 1.5), 2.3 * nrows), layout="constrained")
        grid = fig.add_gridspec(nrows, ncols + (0 if spare else 1),
                                width_ratios=[1] * ncols + ([] if spare else [0.55]))
        for i, metric in enumerate(metrics):
            ax = fig.add_subplot(grid[i // ncols, i % ncols])
            sub = sc[sc["metric"] == metric]
            finite = False
            for dataset in datasets:
                colours = _shades(families[dataset], len(layers))
                for li, layer in enumerate(layers):
                    ld = sub[(sub["dataset"] == dataset) & (sub["layer"] == layer)].sort_values("epoch")
                    if ld.empty:
                        continue
                    finite |= bool(np.isfinite(ld["value"]).any())
                    ax.plot(ld["epoch"], ld["value"], marker="o", ms=2.5, lw=1.1, color=colours[li])
                    if bands:
                        lo, hi = ld["ci_low"].to_numpy(float), ld["ci_high"].to_numpy(float)
                        ok = np.isfinite(lo) & np.isfinite(hi)
                        if ok.any():
                            ax.fill_between(ld["epoch"].to_numpy()[ok], lo[ok], hi[ok], color=colours[li],
                                            alpha=0.2, lw=0)
            kind = sub["kind"].iloc[0]
            per_filter = (sub["granularity"] == "filter").all() if "granularity" in sub else False
            ax.set_title(metric + (" (per filter)" if per_filter else ""))
            ax.set_xlabel("epoch (0 = source model)")
            ax.set_ylabel(f"{METRIC_LABELS.get(kind, kind)}\n({LOWER})")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
            ax.grid(alpha=0.3, lw=0.5)
            if not finite:
                ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center", va="center", color="0.4")
        handles_d = [Line2D([], [], color=dataset_colour(d, datasets), lw=2.5, label=d) for d in datasets]
        greys = _shades("Greys", len(layers))
        handles_l = [Line2D([], [], color=greys[i], lw=2, label=layer) for i, layer in enumerate(layers)]
        lax = fig.add_subplot(grid[nrows - 1, ncols - spare:] if spare else grid[:, ncols])
        lax.axis("off")
        if spare:
            first = lax.legend(handles=handles_d, title="dataset", loc="upper left", frameon=False)
            lax.add_artist(first)
            lax.legend(handles=handles_l, title="layer (early → deep)", loc="upper right", frameon=False)
        else:
            first = lax.legend(handles=handles_d, title="dataset", loc="upper left", frameon=False,
                               bbox_to_anchor=(0, 1))
            lax.add_artist(first)
            # below the dataset legend: its entries and title, ~0.14 in a line, in the column's height
            below = 1 - (len(datasets) + 2.2) * 0.14 / (fig.get_size_inches()[1] - 0.4)
            lax.legend(handles=handles_l, title="layer (early → deep)", loc="upper left", frameon=False,
                       bbox_to_anchor=(0, below))
        fig.suptitle(f"{model}: distance to the source model during fine-tuning ({LOWER})")
        save_figure(fig, out, pdf)
    return fig


# ---- image grids (Figs. 5-8) ------------------------------------------------------------------------

def _wrap_layer(layer: str, width: int = 20) -> str:
    """A long module path over several lines, broken after dots."""
    if len(layer) <= width:
        return layer
    lines, line = [], ""
    for part in layer.split("."):
        piece = part if not line else "." + part
        if line and len(line) + len(piece) > width:
            lines.append(line + ".")
            line = part
        else:
            line += piece
    return "\n".join([*lines, line])


def short_reason(reason: str) -> str:
    """'most changed' / 'least changed' / 'given' from a units table's reason."""
    head = str(reason).removeprefix("filter: ").split(";")[0]
    for tag in ("most changed", "least changed"):
        if head.startswith(tag):
            return tag
    return "given" if head.startswith("given") else ""


def epoch_title(epoch: int) -> str:
    return "source\n(epoch 0)" if epoch == 0 else f"epoch {epoch}"


class _Grid:
    """Panels of CELL_IN x CELL_IN inches in rows and columns; margins fitted to the labels drawn
    around them (row labels left, column titles and title above, colour bars right)."""

    def __init__(self, nrows: int, ncols: int, colorbars: bool = False) -> None:
        self.nrows, self.ncols, self.colorbars = nrows, ncols, colorbars
        self.fig = plt.figure(figsize=(1, 1))
        self.axes = [[self.fig.add_axes((0, 0, 0.1, 0.1)) for _ in range(ncols)] for _ in range(nrows)]
        self.caxes = [self.fig.add_axes((0, 0, 0.1, 0.1)) for _ in range(nrows)] if colorbars else []
        for ax in self._all():
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_linewidth(0.5)
                spine.set_color("0.55")
        self.margins = [2.0, 1.0, 1.2, 0.3]  # left, right, top, bottom (inches), refitted in fit()
        self.decor: list = []                # the texts around the panels (fit() measures them)
        self._place()

    def _all(self):
        return [ax for row in self.axes for ax in row]

    def _place(self) -> None:
        left, right, top, bottom = self.margins
        cb = 0.22 if self.colorbars else 0.0
        w = left + self.ncols * CELL_IN + (self.ncols - 1) * GAP_IN + cb + right
        h = top + self.nrows * CELL_IN + (self.nrows - 1) * GAP_IN + bottom
        self.fig.set_size_inches(w, h)
        for i, row in enumerate(self.axes):
            y = h - top - (i + 1) * CELL_IN - i * GAP_IN
            for j, ax in enumerate(row):
                ax.set_position((((left + j * (CELL_IN + GAP_IN)) / w), y / h, CELL_IN / w, CELL_IN / h))
            if self.colorbars:
                x = left + self.ncols * CELL_IN + (self.ncols - 1) * GAP_IN + 0.1
                self.caxes[i].set_position((x / w, (y + 0.06) / h, 0.07 / w, (CELL_IN - 0.12) / h))

    def fit(self, pad: float = 0.08, top_only: bool = False) -> None:
        """Set the margins to the extent of the texts and colour bars around the panels. They are
        anchored to the panels in points, so one measurement is exact whatever the figure's size
        (and measuring only them is much cheaper than the whole figure's tight box)."""
        renderer = self.fig.canvas.get_renderer()
        boxes = [a.get_window_extent(renderer) for a in self.decor]
        boxes += [c.get_tightbbox(renderer) for c in self.caxes if c.get_visible()]
        boxes += [self.axes[0][0].get_window_extent(renderer), self.axes[-1][-1].get_window_extent(renderer)]
        box = Bbox.union(boxes).transformed(self.fig.dpi_scale_trans.inverted())  # inches
        w, h = self.fig.get_size_inches()
        left, right, top, bottom = self.margins
        fitted = [left - box.x0 + pad, right - (w - box.x1) + pad, top - (h - box.y1) + pad, bottom - box.y0 + pad]
        self.margins = [left, right, fitted[2], bottom] if top_only else fitted
        self._place()

    def layout(self) -> dict:
        """Rows, columns and the panels' pixel box (x0, y0, x1, y1 from the top left) in the PNG."""
        h = self.fig.get_size_inches()[1] * DPI
        first, last = self.axes[0][0].get_position(), self.axes[-1][-1].get_position()
        w_px = self.fig.get_size_inches()[0] * DPI
        return {"rows": self.nrows, "cols": self.ncols,
                "panels": [round(first.x0 * w_px), round(h - first.y1 * h), round(last.x1 * w_px),
                           round(h - last.y0 * h)]}

    def labels(self, row_labels: Sequence[str], epochs: Sequence[int]) -> None:
        for ax, label in zip((row[0] for row in self.axes), row_labels):
            self.decor.append(ax.annotate(label, xy=(0, 0.5), xycoords="axes fraction", xytext=(-4, 0),
                                          textcoords="offset points", ha="right", va="center", fontsize=6.5,
                                          linespacing=1.15))
        for ax, epoch in zip(self.axes[0], epochs):
            self.decor.append(ax.set_title(epoch_title(epoch), fontsize=7, pad=3))

    def title(self, title: str, subtitle: str, colour, pad: float = 0.08) -> None:
        """A title and a grey subtitle above the column titles, from the figure's left edge, wrapped
        to the figure's width (call after :meth:`fit`; fits the top margin again)."""
        renderer = self.fig.canvas.get_renderer()
        ax = self.axes[0][0]
        above = (ax.title.get_window_extent(renderer).y1 - ax.get_window_extent(renderer).y1) * 72 / self.fig.dpi
        left = -(self.margins[0] - pad) * 72  # points from the first panel to the figure's left edge
        chars = max(30, int((self.fig.get_size_inches()[0] - 2 * pad) * 72 / (6.5 * 0.55)))
        sub = ax.annotate(textwrap.fill(subtitle, chars), xy=(0, 1), xycoords="axes fraction",
                          xytext=(left, above + 5), textcoords="offset points", ha="left", va="bottom",
                          fontsize=6.5, color="0.35", linespacing=1.15)
        head = ax.annotate(textwrap.fill(title, int(chars * 6.5 / 8 * 0.9)), xy=(0, 1), xycoords=sub, xytext=(0, 2),
                           textcoords="offset points", ha="left", va="bottom", fontsize=8, fontweight="bold",
                           color=colour, linespacing=1.1)
        self.decor += [sub, head]
        self.fit(pad, top_only=True)


def _checkerboard(h: int, w: int, squares: int = 8) -> np.ndarray:
    """An (h, w) light-grey checkerboard of about ``squares`` squares a side: "no image here"."""
    step = max(1, round(max(h, w) / squares))
    yy, xx = np.mgrid[0:h, 0:w] // step
    return np.where((yy + xx) % 2 == 0, 0.93, 0.78)


def patch_row_label(cls: str, layer: str, filt: int, reason: str = "") -> str:
    tag = short_reason(reason)
    return f"{textwrap.fill(f'class {cls}', 22)}\n{_wrap_layer(layer)}\nfilter {filt}" + (f"\n({tag})" if tag else "")


def patch_grid(rows, epochs: Sequence[int], *, title: str, colour=None, reasons: Sequence[str] | None = None,
               note: str = "") -> tuple[plt.Figure, dict]:
    """The class-average figure: ``rows`` (featdyn.report.visualize.PatchRow: class, layer, filter and a
    featdyn.report.patches.ClassPatch per epoch), one column per epoch in ``epochs`` (source first).
    Checkerboard: pixels no crop covers; hatched "dead": the filter's maximum is <= 0 in every image of
    the class. ``note`` ends the caption (what the input region means for token or measured layers).
    Returns the figure and its layout (:meth:`_Grid.layout`)."""
    reasons = list(reasons or [""] * len(rows))
    with plt.rc_context(STYLE):
        grid = _Grid(len(rows), len(epochs))
        for r, row in enumerate(rows):
            for c, patch in enumerate(row.patches):
                ax = grid.axes[r][c]
                mean = patch.mean()
                if mean is None:
                    ax.set_facecolor("0.95")
                    ax.add_patch(plt.Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, hatch="////",
                                               color="0.75", lw=0))
                    ax.text(0.5, 0.5, "dead", transform=ax.transAxes, ha="center", va="center", fontsize=6.5,
                            color="0.25", bbox={"facecolor": "0.95", "edgecolor": "none", "pad": 1})
                    continue
                # a checkerboard under the patch: pixels outside every image (alpha 0) show it
                h, w = mean.shape[:2]
                ax.imshow(_checkerboard(h, w), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                rgba = np.zeros((*mean.shape[:2], 4))
                covered = np.isfinite(mean[..., 0])
                rgba[covered, :3] = np.clip(mean[covered] / 255.0, 0, 1)
                rgba[covered, 3] = 1.0
                ax.imshow(rgba, interpolation="nearest" if max(mean.shape[:2]) < 48 else "antialiased")
        grid.labels([patch_row_label(row.cls, row.layer, row.filter, why) for row, why in zip(rows, reasons)], epochs)
        grid.fit()
        grid.title(title, "Class-average input patterns: the activation-weighted mean of each image's input region "
                   "at the filter's strongest unit (checkerboard: outside every image; dead: no positive activation "
                   "in the class)." + (f" {note}" if note else ""), colour or "black")
        return grid.fig, grid.layout()


def heatmap_row_label(image_id: int, cls: str, layer: str, filt: int, reason: str = "") -> str:
    tag = short_reason(reason)
    head = f"image {image_id}\n{textwrap.fill(f'class {cls}', 22)}"
    return f"{head}\n{_wrap_layer(layer)}\nfilter {filt}" + (f"\n({tag})" if tag else "")


def heatmap_grid(rows, epochs: Sequence[int], *, title: str, colour=None, reasons: Sequence[str] | None = None,
                 cmap: str = HEATMAP_CMAP, alpha: float = 0.6) -> tuple[plt.Figure, dict]:
    """The sample-heatmap figure: ``rows`` (featdyn.report.visualize.HeatmapRow: the image, the filter's
    map aligned to the image per epoch, the row's colour limits), one column per epoch. The image
    is drawn in grey, the map over it in ``cmap``; every epoch of a row shares one colour scale,
    shown by the row's colour bar. Returns the figure and its layout."""
    reasons = list(reasons or [""] * len(rows))
    with plt.rc_context(STYLE):
        grid = _Grid(len(rows), len(epochs), colorbars=True)
        for r, row in enumerate(rows):
            lo, hi = row.limits
            norm = Normalize(lo, hi if hi > lo else lo + 1.0)
            grey = row.image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
            for c, fmap in enumerate(row.maps):
                ax = grid.axes[r][c]
                ax.imshow(grey, cmap="gray", vmin=0, vmax=255, interpolation="antialiased")
                ax.imshow(fmap, cmap=cmap, norm=norm, alpha=alpha, interpolation="antialiased")
            if hi <= lo:
                # one value in every epoch: no scale to show (a 0..1 bar would suggest one)
                grid.caxes[r].set_visible(False)
                for ax in grid.axes[r]:
                    ax.text(0.5, 0.06, f"constant {lo:.3g}", fontsize=5.5, color="white", ha="center",
                            transform=ax.transAxes)
                continue
            cb = grid.fig.colorbar(ScalarMappable(norm, cmap), cax=grid.caxes[r])
            cb.outline.set_linewidth(0.4)
            cb.ax.tick_params(labelsize=5.5, length=2, width=0.4, pad=1)
            cb.ax.yaxis.set_major_locator(MaxNLocator(3))
        shown = [c for c in grid.caxes if c.get_visible()]
        if shown:
            grid.decor.append(shown[0].annotate("activation", xy=(0, 1), xycoords="axes fraction", xytext=(0, 3),
                                                textcoords="offset points", ha="left", va="bottom", fontsize=6))
        grid.labels([heatmap_row_label(row.image_id, row.cls, row.layer, row.filter, why)
                     for row, why in zip(rows, reasons)], epochs)
        grid.fit()
        grid.title(title, "The filter's feature map over the image (grey), aligned on its units' receptive-field "
                   "centres; one colour scale per row, shared by all epochs.", colour or "black")
        return grid.fig, grid.layout()
