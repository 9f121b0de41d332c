from featdyn.nets.models import fetch_weights
from featdyn.progress import job_setup

log = job_setup(snakemake.log[0], name="fetch_weights")
p = snakemake.params
fetch_weights(p.arch, p.weights, snakemake.output[0], seed=p.seed, width=p.width)
log.info("source weights of %s (%s, width %s) -> %s", p.arch, p.weights, p.width, snakemake.output[0])
