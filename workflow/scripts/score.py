from featdyn.atomic import write_csv
from featdyn.engine.bootstrap import BootstrapSpec
from featdyn.engine.floor import score_job
from featdyn.engine.linalg import resolve_device
from featdyn.progress import job_setup

log = job_setup(snakemake.log[0], snakemake.threads, name="score")
w, p = snakemake.wildcards, snakemake.params
spec = BootstrapSpec.from_config(p.bootstrap)
# every training replicate's distances to its source model, the distances between replicates (the
# noise floor) and the permutation null, one table (featdyn.engine.floor)
df, reps = score_job(snakemake.input, p, w, resolve_device(snakemake.config["device"]), spec)
write_csv(df, snakemake.output[0])
reps.save(snakemake.output.replicates)
log.info("%s for %s x %s: %d rows over %d training replicate(s), %d bootstrap resamples", w.metric, w.model,
         w.dataset, len(df), p.k, reps.resamples)
