import pandas as pd

from featdyn.atomic import write_text
from featdyn.progress import job_setup
from featdyn.tables import table2, table2_layout, to_markdown, write_csv

log = job_setup(snakemake.log[0], name="table2")
scores = pd.concat([pd.read_csv(p) for p in snakemake.input], ignore_index=True)
t2 = table2(scores)
write_csv(t2, snakemake.output.csv)
parts = [to_markdown(table2_layout(t2, m), f"Table 2 ({m}): mean ± std over epochs 1..T of the layer-averaged "
                     f"distance") for m in t2["metric"].unique()]
write_text(snakemake.output.md, "\n".join(parts))
