from featdyn.data.stores import expected_attrs
from featdyn.engine.linalg import pick_device
from featdyn.engine.similarity import pair_group_stats_from_stores
from featdyn.engine.stats import load_group_sides, load_sides, save_group_pairs, save_pairs
from featdyn.progress import job_setup

log = job_setup(snakemake.log[0], snakemake.threads, name="layer_stats")
w, i = snakemake.wildcards, snakemake.input
device = pick_device(snakemake.config["device"])
source = load_sides(i.source_stats, device)
source_groups = load_group_sides(i.source_groups, device)
# Each store must come from its own checkpoint (epoch and sha256), with this run's layers and probe set.
expect = expected_attrs(i.summary, model=w.model, dataset=w.dataset, layers=snakemake.params.layers)
pairs, groups = pair_group_stats_from_stores(i.source_store, i.store, source, device=device, expect=expect,
                                             source_attrs=expected_attrs(checkpoint=i.source_checkpoint),
                                             target_attrs=expected_attrs(checkpoint=i.checkpoint, epoch=int(w.epoch)),
                                             source_groups=source_groups, tokens=snakemake.params.tokens)
save_pairs(snakemake.output[0], pairs)
# the same statistics per image group, for the bootstrap of the score jobs
save_group_pairs(snakemake.output.groups, groups)
log.info("epoch statistics of %d layers -> %s (%d image groups)", len(pairs), snakemake.output[0],
         len(next(iter(groups.values()), [])))
