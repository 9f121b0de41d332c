from featdyn.data.stores import expected_attrs
from featdyn.engine.linalg import pick_device
from featdyn.engine.noise import replicate_pair_stats, save_full_pairs
from featdyn.progress import job_setup

log = job_setup(snakemake.log[0], snakemake.threads, name="replicate_stats")
w, i = snakemake.wildcards, snakemake.input
# Both stores: this run's layers and probe set, the same epoch, each from its own replicate's checkpoint.
expect = expected_attrs(i.summary, model=w.model, dataset=w.dataset, layers=snakemake.params.layers, epoch=int(w.epoch))
pairs = replicate_pair_stats(i.store_a, i.store_b, pick_device(snakemake.config["device"]), expect,
                             attrs_a=expected_attrs(checkpoint=i.checkpoint_a),
                             attrs_b=expected_attrs(checkpoint=i.checkpoint_b), tokens=snakemake.params.tokens)
save_full_pairs(snakemake.output[0], pairs)
log.info("replicates %s and %s, epoch %s: statistics of %d layers -> %s", w.a, w.b, w.epoch, len(pairs),
         snakemake.output[0])
