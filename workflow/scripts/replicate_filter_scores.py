from featdyn.atomic import write_csv
from featdyn.data.stores import expected_attrs
from featdyn.engine.linalg import pick_device
from featdyn.engine.similarity import filter_scores_from_stores
from featdyn.progress import job_setup

log = job_setup(snakemake.log[0], snakemake.threads, name="replicate_filter_scores")
w, i, p = snakemake.wildcards, snakemake.input, snakemake.params
epoch = int(w.epoch)
# Replicate a's store takes the source's place: both of this epoch, each from its own checkpoint.
df, _ = filter_scores_from_stores(i.store_a, i.store_b, p.metric, model=w.model, dataset=w.dataset, metric=w.metric,
                                  device=pick_device(snakemake.config["device"]),
                                  expect=expected_attrs(i.summary, model=w.model, dataset=w.dataset, layers=p.layers),
                                  source_attrs=expected_attrs(checkpoint=i.checkpoint_a, epoch=epoch),
                                  target_attrs=expected_attrs(checkpoint=i.checkpoint_b, epoch=epoch))
write_csv(df, snakemake.output[0])
log.info("%s between replicates %s and %s, epoch %s: %d (layer, class, filter) rows", w.metric, w.a, w.b, w.epoch,
         len(df))
