from pathlib import Path

from featdyn.datasets import ImageCache
from featdyn.progress import job_setup
from featdyn.stores import expected_attrs, open_pair, open_store
from featdyn.tables import write_csv
from featdyn.visualize import units_for_run

log = job_setup(snakemake.log[0], name="choose_units")
w, p, i = snakemake.wildcards, snakemake.params, snakemake.input
expect = expected_attrs(i.summary, model=w.model, dataset=w.dataset)
if "last" in i.keys():
    source, last = open_pair(i.source, i.last, expect)
else:
    source, last = open_store(i.source, expect | {"epoch": 0}), None
units = units_for_run(p.visualize, model=w.model, dataset=w.dataset, cache=ImageCache(Path(i.manifest).parent),
                      source=source, last=last, last_epoch=p.last_epoch,
                      tables=list(i.tables) if "tables" in i.keys() else None, rank_metric=p.rank_metric)
write_csv(units, snakemake.output[0])
for row in units.itertuples(index=False):
    log.info("%s: %s filter %d, class %s: %s", row.figure, row.layer, row.filter, row[6], row.reason)
