from featdyn.progress import job_setup
from featdyn.similarity import pair_group_stats_from_stores
from featdyn.stats import load_group_sides, load_sides, save_group_pairs, save_pairs
from featdyn.stores import expected_attrs
from featdyn.training import pick_device

log = job_setup(snakemake.log[0], snakemake.threads, name="layer_stats")
device = pick_device(snakemake.params.device)
source = load_sides(snakemake.input.source_stats, device)
source_groups = load_group_sides(snakemake.input.source_groups, device)
expect = expected_attrs(snakemake.input.summary, model=snakemake.wildcards.model, dataset=snakemake.wildcards.dataset)
pairs, groups = pair_group_stats_from_stores(snakemake.input.source_store, snakemake.input.store, source,
                                             device=device, expect=expect, source_groups=source_groups)
save_pairs(snakemake.output[0], pairs)
save_group_pairs(snakemake.output.groups, groups)
log.info("epoch statistics of %d layers -> %s (%d image groups)", len(pairs), snakemake.output[0],
         len(next(iter(groups.values()), [])))
