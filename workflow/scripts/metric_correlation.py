import pandas as pd

from featdyn.correlation import metric_correlation
from featdyn.progress import job_setup
from featdyn.tables import write_csv

log = job_setup(snakemake.log[0], name="metric_correlation")
scores = pd.concat([pd.read_csv(p) for p in snakemake.input.scores], ignore_index=True)
filters = pd.concat([pd.read_csv(p) for p in snakemake.input.filters], ignore_index=True) \
    if snakemake.input.filters else None
write_csv(metric_correlation(scores, filters), snakemake.output[0])
