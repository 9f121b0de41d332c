from featdyn.data.demo_data import materialise
from featdyn.progress import job_setup

log = job_setup(snakemake.log[0], name="materialise_demo")
counts = materialise(snakemake.params.demo, snakemake.output[0], **(
    {"seed": snakemake.params.seed} if snakemake.params.demo == "digits" else {}))
log.info("demo dataset %s: %s images per class in %s", snakemake.params.demo, counts, snakemake.output[0])
