from featdyn.bootstrap import save_filter_groups
from featdyn.progress import job_setup
from featdyn.similarity import filter_tables_from_stores
from featdyn.stores import expected_attrs
from featdyn.tables import write_csv
from featdyn.training import pick_device

log = job_setup(snakemake.log[0], snakemake.threads, name="filter_scores")
w = snakemake.wildcards
df, groups = filter_tables_from_stores(snakemake.input.source_store, snakemake.input.store, snakemake.params.metric,
                                       model=w.model, dataset=w.dataset, metric=w.metric,
                                       device=pick_device(snakemake.params.device),
                                       expect=expected_attrs(snakemake.input.summary, model=w.model, dataset=w.dataset),
                                       groups=snakemake.params.groups)
write_csv(df, snakemake.output[0])
save_filter_groups(snakemake.output.groups, groups)
log.info("%s for %s x %s epoch %s: %d (layer, class, filter) rows", w.metric, w.model, w.dataset, w.epoch, len(df))
