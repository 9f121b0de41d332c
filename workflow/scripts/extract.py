from featdyn.data.datasets import ImageCache
from featdyn.engine.linalg import pick_device
from featdyn.nets.extraction import extract
from featdyn.progress import job_setup

log = job_setup(snakemake.log[0], snakemake.threads, name="extract")
w, p = snakemake.wildcards, snakemake.params
cache = ImageCache(snakemake.input.manifest.rsplit("/", 1)[0])
ex = p.extraction
device = pick_device(snakemake.config["device"])  # from the config, not a param: it reruns nothing
extract(snakemake.input.checkpoint, cache, p.layers, snakemake.output[0], batch_size=ex["batch_size"],
        dtype=ex["dtype"], codec=ex["codec"], level=ex["level"], device=device,
        attrs={"model": w.model, "dataset": w.dataset}, layout=p.layout)
