import pandas as pd

from featdyn.atomic import write_text
from featdyn.progress import job_setup
from featdyn.tables import table2, table2_layout, to_markdown, write_csv

log = job_setup(snakemake.log[0], name="table2")
p = snakemake.params
scores = pd.concat([pd.read_csv(path) for path in snakemake.input], ignore_index=True)
t2 = table2(scores)
write_csv(t2, snakemake.output.csv)
parts = [to_markdown(table2_layout(t2, m, p.models, p.datasets),
                     f"Table 2 ({m}): mean ± std over epochs 1..T of the layer-averaged distance")
         for m in p.metrics if m in set(t2["metric"])]
write_text(snakemake.output.md, "\n".join(parts))
