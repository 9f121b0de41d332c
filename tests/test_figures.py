"""The figures: similarity curves from a tidy score table (bands, no empty panel, the metric's
direction on every panel), and the patch and heatmap grids of a real tiny workflow run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.collections import PolyCollection
from matplotlib.legend import Legend
from PIL import Image

from featdyn.report.figures import LOWER, similarity_curves

from conftest import REPO, job_counts, snakemake, tiny_config


def score_rows(metrics=("procrustes", "pwsm"), datasets=("a", "b"), layers=3, epochs=4, bands=False):
    rows = []
    for d in datasets:
        for k in metrics:
            for i in range(layers):
                for e in range(epochs):
                    v = 0.1 * e * (i + 1)
                    row = dict(model="m", dataset=d, metric=k, kind=k.split("_")[0], granularity="layer",
                               layer=f"l{i}", layer_index=i, epoch=e, value=v)
                    if bands:
                        row |= {"ci_low": v - 0.02 if e else np.nan, "ci_high": v + 0.03 if e else np.nan}
                    rows.append(row)
    return pd.DataFrame(rows)


def test_similarity_curves_png_and_pdf(tmp_path):
    out, pdf = tmp_path / "fig.png", tmp_path / "fig.pdf"
    fig = similarity_curves(score_rows(), "m", out, pdf)
    with Image.open(out) as im:
        assert im.width > 2 * im.height > 300, "one panel per metric, side by side"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    panels = [ax for ax in fig.axes if ax.lines]
    assert len(panels) == 2
    for ax in panels:
        assert LOWER in ax.get_ylabel(), "every panel states the metric's direction"
        assert not any(isinstance(c, PolyCollection) for c in ax.collections), "no bands without intervals"
    # the legend lists the layers early to deep (layer_index order), as the paper's legends
    texts = [t.get_text() for leg in fig.findobj(Legend) for t in leg.get_texts()]
    assert [t for t in texts if t.startswith("l")] == ["l0", "l1", "l2"]


def test_confidence_bands_where_the_table_has_them(tmp_path):
    scores = score_rows(bands=True)
    fig = similarity_curves(scores, "m", tmp_path / "f.png")
    for ax in (ax for ax in fig.axes if ax.lines):
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == 2 * 3, "one band per (dataset, layer)"
        ys = np.concatenate([b.get_paths()[0].vertices[:, 1] for b in bands])
        assert ys.max() == pytest.approx(scores["ci_high"].max())
    scores[["ci_low", "ci_high"]] = np.nan    # the columns present but off: no band
    fig = similarity_curves(scores, "m", tmp_path / "g.png")
    assert not any(isinstance(c, PolyCollection) for ax in fig.axes for c in ax.collections)


@pytest.mark.parametrize("n", [4, 5, 7])
def test_no_empty_panel(tmp_path, n):
    metrics = [f"procrustes_{i}" for i in range(n)]
    fig = similarity_curves(score_rows(metrics=metrics), "m", tmp_path / "f.png")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    for ax in visible:
        assert ax.lines or ax.get_legend() is not None, "a panel with neither curves nor the legend"
    assert sum(bool(ax.lines) for ax in visible) == n


def png_grid(path) -> tuple[int, int, dict]:
    """Rows and columns of panels counted in the PNG's pixels: inside the panels' box (from the
    file's metadata), the runs of pixel columns and rows that are not all white (every panel has a
    frame, the gaps between panels are white)."""
    with Image.open(path) as im:
        meta = json.loads(im.text["featdyn:grid"])
        pixels = np.asarray(im.convert("RGB"), dtype=np.int16)
    x0, y0, x1, y1 = meta["panels"]
    block = pixels[y0:y1 + 1, x0:x1 + 1]
    ink = (block < 235).any(axis=2)

    def runs(mask):
        return int(np.sum(mask[1:] & ~mask[:-1]) + mask[0])

    # the white gaps run the whole height (width) of the block
    return runs(ink.any(axis=0)), runs(ink.any(axis=1)), meta


@pytest.mark.workflow
def test_demo_draws_every_figure():
    proc = snakemake(REPO, "-n", "--forceall", "--quiet", "rules")
    counts = job_counts(proc.stdout)
    assert counts["visualize"] == 2 and counts["similarity_curves"] == 1, counts


@pytest.mark.workflow
def test_tiny_run_figures(tiny_run):
    fig = tiny_run / "results/figures"
    units = pd.read_csv(fig / "units_mnet_colours.csv")
    patches, heat = units[units["figure"] == "patches"], units[units["figure"] == "heatmaps"]
    # the tiny config: layers features.1, features.3; 2 classes; epochs 0..2; defaults elsewhere
    assert len(patches) == 2 * 2 * 2 and len(heat) == 2 * 2 * 2
    assert set(patches["layer"]) == {"features.1", "features.3"} and units["reason"].notna().all()
    assert heat["image"].notna().all() and heat["path"].str.endswith(".png").all()
    for kind, rows in (("patches", 8), ("heatmaps", 8)):
        cols, nrows, meta = png_grid(fig / f"{kind}_mnet_colours.png")
        assert (meta["rows"], meta["cols"]) == (rows, 3)
        assert (nrows, cols) == (rows, 3), f"{kind}: the PNG shows {nrows} x {cols} panels"
        assert (fig / f"{kind}_mnet_colours.pdf").read_bytes()[:5] == b"%PDF-"
    assert (fig / "similarity_mnet.pdf").stat().st_size > 5_000
    log = (tiny_run / "results/logs/figures/visualize_mnet_colours.log").read_text()
    assert "receptive field features.3: 8x8 units, field 19x19 px" in log


@pytest.mark.workflow
def test_changing_the_visualize_block_reruns_only_the_figures(tiny_run, tmp_path):
    shutil.copytree(tiny_run, tmp_path, symlinks=True, dirs_exist_ok=True)
    cfg = tiny_config(tmp_path / "cfg2")
    data = yaml.safe_load(cfg.read_text())
    data["datasets"]["colours"]["path"] = "data/colours"
    data["visualize"] = {"patches": {"filters": [0, 3], "classes": ["class_1"]}, "heatmaps": {"images": 1}}
    cfg.write_text(yaml.safe_dump(data))
    counts = job_counts(snakemake(tmp_path, "--configfile", str(cfg), "-n", "--quiet", "rules").stdout)
    assert counts == {"visualize": 1, "all": 1, "total": 2}, counts
    # a bad class name stops the choice with the key named
    data["visualize"]["patches"]["classes"] = ["zebra"]
    cfg.write_text(yaml.safe_dump(data))
    proc = snakemake(tmp_path, "--configfile", str(cfg), "--cores", "1", "results/figures/units_mnet_colours.csv",
                     check=False)
    assert proc.returncode != 0
    log = (tmp_path / "results/logs/figures/visualize_mnet_colours.log").read_text()
    assert "visualize.patches.classes" in log and "zebra" in log
