import pandas as pd

from featdyn.atomic import write_csv, write_text
from featdyn.engine.bootstrap import BootstrapSpec, Replicates
from featdyn.progress import job_setup
from featdyn.report.recipe_figure import recipe_figure
from featdyn.report.recipes import recipe_caption, recipe_layout, recipe_table
from featdyn.report.replicas import source_rows
from featdyn.report.tables import html_page, to_html, to_markdown

log = job_setup(snakemake.log[0], name="recipes")
p, inp, out = snakemake.params, snakemake.input, snakemake.output
spec = BootstrapSpec.from_config(p.bootstrap)
table = recipe_table(
    pd.read_csv(inp.accuracy),
    # distances to the source (the replicates' mean), not the noise floor's or the null's rows
    source_rows(pd.concat([pd.read_csv(path) for path in inp.scores], ignore_index=True)),
    {tuple(key): Replicates.load(path) for key, path in zip(p.replicate_keys, inp.replicates)},
    p.groups, p.labels, p.metrics, spec.level, spec.interval)
write_csv(table, out.csv)
md, html = [], []
for arch, dataset, metric in dict.fromkeys(zip(table["arch"], table["dataset"], table["metric"])):
    layout = recipe_layout(table, arch, dataset, metric)
    title, caption = f"Recipes of {arch} on {dataset} ({metric})", recipe_caption(table, arch, dataset, metric,
                                                                                   spec.describe())
    md.append(to_markdown(layout, title, caption=caption))
    html.append(to_html(layout, title, caption=caption))
write_text(out.md, "\n".join(md))
write_text(out.html, html_page("Recipes", html))
recipe_figure(table, p.metrics[0], out.png, out.pdf)
log.info("recipes: %d groups, %d rows", len(p.groups), len(table))
