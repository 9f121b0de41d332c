from featdyn.progress import job_setup
from featdyn.similarity import source_stats_from_store
from featdyn.stats import save_sides
from featdyn.training import pick_device

log = job_setup(snakemake.log[0], snakemake.threads, name="source_stats")
sides = source_stats_from_store(snakemake.input.store, device=pick_device(snakemake.params.device))
save_sides(snakemake.output[0], sides)
log.info("source statistics of %d layers -> %s", len(sides), snakemake.output[0])
