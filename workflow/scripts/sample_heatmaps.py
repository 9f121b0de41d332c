from pathlib import Path

from featdyn.datasets import ImageCache
from featdyn.figures import dataset_colour, heatmap_grid, save_figure
from featdyn.progress import job_setup
from featdyn.receptive_field import describe
from featdyn.stores import expected_attrs
from featdyn.units import read_units
from featdyn.visualize import fields_for, heatmap_rows, open_stores

log = job_setup(snakemake.log[0], name="sample_heatmaps")
w, p, i = snakemake.wildcards, snakemake.params, snakemake.input
stores = open_stores(dict(zip(p.epochs, i.stores)), expected_attrs(i.summary, model=w.model, dataset=w.dataset))
units = read_units(i.units)
units = units[units["figure"] == "heatmaps"]
source = stores[0]
fields = fields_for(source.attrs["arch"], p.width, units["layer"].unique(), int(source.attrs["image_size"]))
for rf in fields.values():
    log.info("receptive field %s", describe(rf))
rows = heatmap_rows(units, stores, ImageCache(Path(i.manifest).parent), fields, p.epochs)
for row in rows:
    log.info("image %d %s filter %d: colour scale %.4g .. %.4g", row.image_id, row.layer, row.filter, *row.limits)
fig, layout = heatmap_grid(rows, p.epochs, title=f"{w.model} · {w.dataset}",
                           colour=dataset_colour(w.dataset, p.datasets), reasons=units["reason"].tolist())
save_figure(fig, snakemake.output.png, snakemake.output.pdf, layout)
