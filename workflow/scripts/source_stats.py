from featdyn.data.stores import expected_attrs
from featdyn.engine.linalg import pick_device
from featdyn.engine.similarity import source_group_stats_from_store
from featdyn.engine.stats import save_group_sides, save_sides
from featdyn.progress import job_setup

log = job_setup(snakemake.log[0], snakemake.threads, name="source_stats")
w, i = snakemake.wildcards, snakemake.input
# The store must be the one extracted from this run's epoch-0 checkpoint, with this run's layers and probe set.
expect = expected_attrs(i.summary, i.checkpoint, model=w.model, dataset=w.dataset, layers=snakemake.params.layers)
sides, groups = source_group_stats_from_store(i.store, device=pick_device(snakemake.config["device"]), expect=expect,
                                              groups=snakemake.params.groups,
                                              tokens=snakemake.params.tokens)
save_sides(snakemake.output[0], sides)
# the same statistics per image group, for the bootstrap of the score jobs
save_group_sides(snakemake.output.groups, groups)
log.info("source statistics of %d layers -> %s (%d image groups)", len(sides), snakemake.output[0],
         snakemake.params.groups)
