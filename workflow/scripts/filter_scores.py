from featdyn.progress import job_setup
from featdyn.similarity import filter_table_from_stores
from featdyn.stores import expected_attrs
from featdyn.tables import write_csv
from featdyn.training import pick_device

log = job_setup(snakemake.log[0], snakemake.threads, name="filter_scores")
w = snakemake.wildcards
df = filter_table_from_stores(snakemake.input.source_store, snakemake.input.store, snakemake.params.metric,
                              model=w.model, dataset=w.dataset, metric=w.metric,
                              device=pick_device(snakemake.config["device"]),
                              expect=expected_attrs(snakemake.input.summary, model=w.model, dataset=w.dataset))
write_csv(df, snakemake.output[0])
log.info("%s for %s x %s epoch %s: %d (layer, class, filter) rows", w.metric, w.model, w.dataset, w.epoch, len(df))
