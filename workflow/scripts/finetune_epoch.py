import json

import torch

from featdyn.atomic import write_text
from featdyn.datasets import ImageCache
from featdyn.progress import job_setup
from featdyn.training import TrainConfig, pick_device, run_epoch

log = job_setup(snakemake.log[0], snakemake.threads, name="finetune_epoch")
w, p = snakemake.wildcards, snakemake.params
cache = ImageCache(snakemake.input.manifest.rsplit("/", 1)[0])
device = pick_device(p.device)
log.info("%s on %s, epoch %s, device %s, %d threads", w.model, w.dataset, w.epoch, device, torch.get_num_threads())
row = run_epoch(int(w.epoch), p.arch, cache, TrainConfig.from_dict(p.training), snakemake.output.checkpoint,
                weights_file=snakemake.input.get("weights"), previous=snakemake.input.get("previous"),
                device=device, width=p.width, threads=snakemake.threads)
# allow_nan=False: the JSON stays standard (a NaN loss has already stopped the job)
write_text(snakemake.output.metrics,
           json.dumps({"model": w.model, "dataset": w.dataset, **row}, indent=2, allow_nan=False))
