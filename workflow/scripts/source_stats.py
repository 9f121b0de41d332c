from featdyn.progress import job_setup
from featdyn.similarity import source_group_stats_from_store
from featdyn.stats import save_group_sides, save_sides
from featdyn.stores import expected_attrs
from featdyn.training import pick_device

log = job_setup(snakemake.log[0], snakemake.threads, name="source_stats")
expect = expected_attrs(snakemake.input.summary, model=snakemake.wildcards.model, dataset=snakemake.wildcards.dataset)
sides, groups = source_group_stats_from_store(snakemake.input.store, device=pick_device(snakemake.params.device),
                                              expect=expect, groups=snakemake.params.groups)
save_sides(snakemake.output[0], sides)
save_group_sides(snakemake.output.groups, groups)
log.info("source statistics of %d layers -> %s (%d image groups)", len(sides), snakemake.output[0],
         snakemake.params.groups)
