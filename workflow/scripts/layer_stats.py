from featdyn.progress import job_setup
from featdyn.similarity import pair_stats_from_stores
from featdyn.stats import load_sides, save_pairs
from featdyn.stores import expected_attrs
from featdyn.training import pick_device

log = job_setup(snakemake.log[0], snakemake.threads, name="layer_stats")
device = pick_device(snakemake.config["device"])
source = load_sides(snakemake.input.source_stats, device)
expect = expected_attrs(snakemake.input.summary, model=snakemake.wildcards.model, dataset=snakemake.wildcards.dataset)
pairs = pair_stats_from_stores(snakemake.input.source_store, snakemake.input.store, source, device=device,
                               expect=expect)
save_pairs(snakemake.output[0], pairs)
log.info("epoch statistics of %d layers -> %s", len(pairs), snakemake.output[0])
