from featdyn.atomic import write_csv
from featdyn.engine.bootstrap import BootstrapSpec
from featdyn.engine.linalg import resolve_device
from featdyn.engine.similarity import score_filters_with_replicates, score_layers_with_replicates
from featdyn.progress import job_setup

log = job_setup(snakemake.log[0], snakemake.threads, name="score")
w, p = snakemake.wildcards, snakemake.params
spec = BootstrapSpec.from_config(p.bootstrap)
if p.metric["granularity"] == "filter":
    df, reps = score_filters_with_replicates(snakemake.input.epochs, p.metric, model=w.model, dataset=w.dataset,
                                             metric=w.metric, spec=spec, group_files=snakemake.input.groups)
else:
    df, reps = score_layers_with_replicates(snakemake.input.source, snakemake.input.epochs, p.epochs, p.metric,
                                            model=w.model, dataset=w.dataset, metric=w.metric,
                                            device=resolve_device(snakemake.config["device"]), spec=spec,
                                            source_groups_file=snakemake.input.source_groups,
                                            group_files=snakemake.input.groups)
write_csv(df, snakemake.output[0])
reps.save(snakemake.output.replicates)
log.info("%s for %s x %s: %d values, %d bootstrap replicates", w.metric, w.model, w.dataset, len(df), reps.resamples)
