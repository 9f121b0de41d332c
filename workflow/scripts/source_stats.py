from featdyn.progress import job_setup
from featdyn.similarity import source_stats_from_store
from featdyn.stats import save_sides
from featdyn.stores import expected_attrs
from featdyn.training import pick_device

log = job_setup(snakemake.log[0], snakemake.threads, name="source_stats")
expect = expected_attrs(snakemake.input.summary, model=snakemake.wildcards.model, dataset=snakemake.wildcards.dataset)
sides = source_stats_from_store(snakemake.input.store, device=pick_device(snakemake.config["device"]), expect=expect)
save_sides(snakemake.output[0], sides)
log.info("source statistics of %d layers -> %s", len(sides), snakemake.output[0])
