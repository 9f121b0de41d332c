from featdyn.progress import job_setup
from featdyn.similarity import score_filters, score_layers
from featdyn.tables import write_csv

log = job_setup(snakemake.log[0], snakemake.threads, name="score")
w, p = snakemake.wildcards, snakemake.params
if p.metric["granularity"] == "filter":
    df = score_filters(snakemake.input.epochs, p.metric, model=w.model, dataset=w.dataset, metric=w.metric)
else:
    df = score_layers(snakemake.input.source, snakemake.input.epochs, p.epochs, p.metric,
                      model=w.model, dataset=w.dataset, metric=w.metric)
write_csv(df, snakemake.output[0])
log.info("%s for %s x %s: %d values", w.metric, w.model, w.dataset, len(df))
