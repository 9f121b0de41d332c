from featdyn.data.stores import expected_attrs
from featdyn.engine.linalg import pick_device
from featdyn.engine.noise import null_stats_from_store, save_null
from featdyn.engine.stats import load_sides
from featdyn.progress import job_setup

log = job_setup(snakemake.log[0], snakemake.threads, name="null_stats")
w, i, p = snakemake.wildcards, snakemake.input, snakemake.params
device = pick_device(snakemake.config["device"])
expect = expected_attrs(i.summary, i.checkpoint, model=w.model, dataset=w.dataset, layers=p.layers, epoch=0)
pairs = null_stats_from_store(i.store, load_sides(i.source_stats, device), p.null["permutations"], p.null["seed"],
                              device=device, expect=expect, tokens=p.tokens)
save_null(snakemake.output[0], pairs)
log.info("permutation null: %d permutations of %d layers -> %s", p.null["permutations"], len(pairs), snakemake.output[0])
