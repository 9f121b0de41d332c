from featdyn.atomic import write_csv
from featdyn.data.stores import expected_attrs
from featdyn.engine.bootstrap import save_filter_groups
from featdyn.engine.linalg import pick_device
from featdyn.engine.similarity import filter_scores_from_stores
from featdyn.progress import job_setup

log = job_setup(snakemake.log[0], snakemake.threads, name="filter_scores")
w, i, p = snakemake.wildcards, snakemake.input, snakemake.params
# Each store must come from its own checkpoint (epoch and sha256), with this run's layers and probe set.
df, groups = filter_scores_from_stores(i.source_store, i.store, p.metric, model=w.model, dataset=w.dataset,
                                       metric=w.metric, device=pick_device(snakemake.config["device"]),
                                       expect=expected_attrs(i.summary, model=w.model, dataset=w.dataset,
                                                             layers=p.layers),
                                       source_attrs=expected_attrs(checkpoint=i.source_checkpoint),
                                       target_attrs=expected_attrs(checkpoint=i.checkpoint, epoch=int(w.epoch)),
                                       groups=p.groups)
write_csv(df, snakemake.output[0])
# per (image group, class, filter) sums for the bootstrap of the score job
save_filter_groups(snakemake.output.groups, groups)
log.info("%s for %s x %s epoch %s: %d (layer, class, filter) rows", w.metric, w.model, w.dataset, w.epoch, len(df))
