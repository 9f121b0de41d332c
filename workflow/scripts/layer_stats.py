from featdyn.progress import job_setup
from featdyn.similarity import pair_stats_from_stores
from featdyn.stats import load_sides, save_pairs
from featdyn.stores import expected_attrs
from featdyn.training import pick_device

log = job_setup(snakemake.log[0], snakemake.threads, name="layer_stats")
w, i = snakemake.wildcards, snakemake.input
device = pick_device(snakemake.config["device"])
source = load_sides(i.source_stats, device)
# Each store must come from its own checkpoint (epoch and sha256), with this run's layers and probe set.
expect = expected_attrs(i.summary, model=w.model, dataset=w.dataset, layers=snakemake.params.layers)
pairs = pair_stats_from_stores(i.source_store, i.store, source, device=device, expect=expect,
                               source_attrs=expected_attrs(checkpoint=i.source_checkpoint),
                               target_attrs=expected_attrs(checkpoint=i.checkpoint, epoch=int(w.epoch)))
save_pairs(snakemake.output[0], pairs)
log.info("epoch statistics of %d layers -> %s", len(pairs), snakemake.output[0])
