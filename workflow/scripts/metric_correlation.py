import pandas as pd

from featdyn.progress import job_setup
from featdyn.tables import metric_correlation, write_csv

log = job_setup(snakemake.log[0], name="metric_correlation")
scores = pd.concat([pd.read_csv(p) for p in snakemake.input], ignore_index=True)
write_csv(metric_correlation(scores), snakemake.output[0])
