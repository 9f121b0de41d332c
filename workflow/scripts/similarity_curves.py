import pandas as pd

from featdyn.progress import job_setup
from featdyn.report.figures import similarity_curves

log = job_setup(snakemake.log[0], name="similarity_curves")
scores = pd.concat([pd.read_csv(p) for p in snakemake.input], ignore_index=True)
similarity_curves(scores, snakemake.wildcards.model, snakemake.output.png, snakemake.output.pdf,
                  datasets=snakemake.params.datasets)
