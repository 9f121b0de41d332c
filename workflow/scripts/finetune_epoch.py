import json

import torch

from featdyn.atomic import write_text
from featdyn.data.datasets import ImageCache
from featdyn.engine.linalg import pick_device
from featdyn.nets.recipes import reference_distances
from featdyn.nets.training import run_epoch
from featdyn.progress import job_setup
from featdyn.spec.hyperparams import TrainConfig, epoch_params, training_config
from featdyn.spec.replicates import rep_index

log = job_setup(snakemake.log[0], snakemake.threads, name="finetune_epoch")
w, p = snakemake.wildcards, snakemake.params
epoch, replicate = int(w.epoch), rep_index(w.rep)
# The whole block, with the settings that change no checkpoint (epochs, eval_batch_size), from the
# config; the params hold the part this epoch depends on (what reruns it), the same by construction.
training = training_config(snakemake.config, w.model, w.dataset, replicate)
assert epoch_params(training, epoch) == p.training, (epoch_params(training, epoch), p.training)
# lr_from: the reference run's per-layer distances (its score file is this job's input)
distances = None
if snakemake.input.get("reference"):
    ref = training["lr_from"]
    distances = reference_distances(snakemake.input.reference, ref["metric"], ref["epoch"])
    log.info("learning rates from %s (%s, epoch %s): distances %s", ref["model"], ref["metric"], ref["epoch"], distances)
cache = ImageCache(snakemake.input.manifest.rsplit("/", 1)[0])
device = pick_device(snakemake.config["device"])
log.info("%s on %s, replicate %d, epoch %s, device %s, %d threads", w.model, w.dataset, replicate, w.epoch, device,
         torch.get_num_threads())
row = run_epoch(epoch, p.arch, cache, TrainConfig.from_dict(training), snakemake.output.checkpoint,
                weights_file=snakemake.input.get("weights"), previous=snakemake.input.get("previous"),
                previous_state=snakemake.input.get("previous_state"), state_out=snakemake.output.state,
                device=device, width=p.width, threads=snakemake.threads, distances=distances)
# allow_nan=False: the JSON stays standard (a NaN loss has already stopped the job)
write_text(snakemake.output.metrics,
           json.dumps({"model": w.model, "dataset": w.dataset, **({"replicate": replicate} if replicate else {}), **row},
                      indent=2, allow_nan=False))
