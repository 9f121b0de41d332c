from featdyn.data.download import fetch_dataset
from featdyn.progress import job_setup

log = job_setup(snakemake.log[0], name="download_dataset")
p = snakemake.params
fetch_dataset(p.url, p.sha256, snakemake.output[0], what=f"datasets.{snakemake.wildcards.dataset}")
