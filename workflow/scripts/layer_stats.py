from featdyn.progress import job_setup
from featdyn.similarity import pair_stats_from_stores
from featdyn.stats import load_sides, save_pairs
from featdyn.training import pick_device

log = job_setup(snakemake.log[0], snakemake.threads, name="layer_stats")
device = pick_device(snakemake.params.device)
source = load_sides(snakemake.input.source_stats, device)
pairs = pair_stats_from_stores(snakemake.input.source_store, snakemake.input.store, source, device=device)
save_pairs(snakemake.output[0], pairs)
log.info("epoch statistics of %d layers -> %s", len(pairs), snakemake.output[0])
