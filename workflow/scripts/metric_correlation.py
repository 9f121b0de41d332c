import pandas as pd

from featdyn.atomic import write_csv, write_text
from featdyn.engine.bootstrap import Replicates
from featdyn.progress import job_setup
from featdyn.report.correlation import metric_correlation
from featdyn.report.tables import frame_table, html_page, to_html, to_markdown

log = job_setup(snakemake.log[0], name="metric_correlation")
out = snakemake.output
scores = pd.concat([pd.read_csv(p) for p in snakemake.input.scores], ignore_index=True)
filters = pd.concat([pd.read_csv(p) for p in snakemake.input.filters], ignore_index=True) \
    if snakemake.input.filters else None
keys = snakemake.params.replicate_keys
reps = {tuple(key): Replicates.load(path) for key, path in zip(keys, snakemake.input.replicates)}
corr = metric_correlation(scores, filters, replicates=reps)
write_csv(corr, out.csv)
caption = ("Pearson r and Spearman rho between two metrics. layers_epochs: over the (layer, epoch >= 1) values "
           "per model and dataset and over all ('all'); [r_ci_low, r_ci_high]: bootstrap interval of r over the "
           "probe images. filters_per_class (the authors' reading): r across filters per (layer, epoch >= 1, "
           "class), mean and population std. n: points (layers_epochs) or correlations (filters_per_class); "
           "undefined: correlations with fewer than 3 points or a constant vector, counted, not averaged.")
table = frame_table(corr)
write_text(out.md, to_markdown(table, "Agreement between the metrics", caption=caption))
write_text(out.html, html_page("Metric agreement", [to_html(table, "Agreement between the metrics", caption=caption)]))
