import pandas as pd

from featdyn.atomic import write_csv, write_text
from featdyn.engine.bootstrap import BootstrapSpec, Replicates
from featdyn.progress import job_setup
from featdyn.report.tables import (
    html_page,
    table2,
    table2_best,
    table2_caption,
    table2_layers,
    table2_layers_caption,
    table2_layers_layout,
    table2_layout,
    to_html,
    to_latex,
    to_markdown,
)

log = job_setup(snakemake.log[0], name="table2")
p, out = snakemake.params, snakemake.output
scores = pd.concat([pd.read_csv(path) for path in snakemake.input.scores], ignore_index=True)
reps = {tuple(key): Replicates.load(path) for key, path in zip(p.replicate_keys, snakemake.input.replicates)}
interval = BootstrapSpec.from_config(p.bootstrap).describe()

t2 = table2(scores, reps)
write_csv(t2, out.csv)
md, tex, html = [], [], []
for _i, m in enumerate(x for x in p.metrics if x in set(t2["metric"])):
    layout, best = table2_layout(t2, m, p.models, p.datasets), table2_best(t2, m, p.models, p.datasets)
    title, caption = f"Table 2 ({m}): distance to the source model", table2_caption(t2, m, interval)
    md.append(to_markdown(layout, title, best, caption))
    tex.append(to_latex(layout, caption, f"tab:featdyn-reusability-{m}", best))
    html.append(to_html(layout, title, best, caption))
write_text(out.md, "\n".join(md))
write_text(out.tex, "\n".join(tex))
write_text(out.html, html_page("Table 2", html))

layers = table2_layers(scores, reps)
write_csv(layers, out.layers_csv)
md, tex, html = [], [], []
for m in (x for x in p.metrics if x in set(layers["metric"])):
    for model in (x for x in p.models if x in set(layers["model"])):
        sub = layers[(layers["metric"] == m) & (layers["model"] == model)]
        layout = table2_layers_layout(layers, model, m, p.datasets)
        caption = table2_layers_caption(m, model, sub["granularity"].iloc[0], "; ".join(sorted(set(sub["epoch_list"]))),
                                        interval)
        title = f"Table 2 per layer ({model}, {m})"
        md.append(to_markdown(layout, title, caption=caption))
        tex.append(to_latex(layout, caption, f"tab:featdyn-layers-{model}-{m}"))
        html.append(to_html(layout, title, caption=caption))
write_text(out.layers_md, "\n".join(md))
write_text(out.layers_tex, "\n".join(tex))
write_text(out.layers_html, html_page("Table 2 per layer", html))
log.info("table 2: %d entries, %d per-layer rows", len(t2), len(layers))
