from pathlib import Path

from featdyn.atomic import write_csv
from featdyn.data.datasets import ImageCache
from featdyn.data.stores import expected_attrs, open_store
from featdyn.nets.receptive_field import describe
from featdyn.nets.unit_fields import how as field_how
from featdyn.progress import job_setup
from featdyn.report.figures import dataset_colour, heatmap_grid, patch_grid, save_figure
from featdyn.report.visualize import field_note, fields_for, heatmap_rows, open_stores, patch_rows, units_for_run

log = job_setup(snakemake.log[0], name="visualize")
w, p, i, o = snakemake.wildcards, snakemake.params, snakemake.input, snakemake.output
expect = expected_attrs(i.summary, model=w.model, dataset=w.dataset)
cache = ImageCache(Path(i.manifest).parent)
stores = open_stores(dict(zip(p.epochs, i.stores)), expect)
last = open_store(i.last, expect | {"epoch": p.last_epoch}) if "last" in i.keys() else None

units = units_for_run(p.visualize, model=w.model, dataset=w.dataset, cache=cache, source=stores[0], last=last,
                      last_epoch=p.last_epoch, tables=list(i.tables) if "tables" in i.keys() else None,
                      rank_metric=p.rank_metric)
source = stores[0]
fields = fields_for(source.attrs["arch"], p.width, units["layer"].unique(), int(source.attrs["image_size"]),
                    source.attrs.get("layouts"))
for rf in fields.values():
    log.info("receptive field %s (%s)", describe(rf), field_how(rf))
# how each layer's input region was found: exact (traced graph), measured, or a token's patch
units["field"] = units["layer"].map(lambda layer: field_how(fields[layer]))
write_csv(units, o.units)
for row in units.to_dict("records"):
    log.info("%s: %s filter %d, class %s: %s", row["figure"], row["layer"], row["filter"], row["class"], row["reason"])
title, colour = f"{w.model} · {w.dataset}", dataset_colour(w.dataset, p.datasets)

patches = patch_rows(units, stores, cache, fields, p.epochs)
for row in patches:
    log.info("patches %s %s filter %d: responding images per epoch %s", row.cls, row.layer, row.filter,
             [f"{c.responding}/{c.images}" for c in row.patches])
fig, layout = patch_grid(patches, p.epochs, title=title, colour=colour,
                         reasons=units[units["figure"] == "patches"]["reason"].tolist(), note=field_note(fields))
save_figure(fig, o.patches, o.patches_pdf, layout)

heatmaps = heatmap_rows(units, stores, cache, fields, p.epochs)
for row in heatmaps:
    log.info("heatmaps image %d %s filter %d: colour scale %.4g .. %.4g", row.image_id, row.layer, row.filter,
             *row.limits)
fig, layout = heatmap_grid(heatmaps, p.epochs, title=title, colour=colour,
                           reasons=units[units["figure"] == "heatmaps"]["reason"].tolist())
save_figure(fig, o.heatmaps, o.heatmaps_pdf, layout)
