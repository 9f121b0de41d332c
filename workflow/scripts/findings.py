import pandas as pd

from featdyn.atomic import write_text
from featdyn.engine.bootstrap import BootstrapSpec, Replicates
from featdyn.progress import job_setup
from featdyn.report.findings import RunNumbers, findings, noise_floor, to_markdown, to_rst
from featdyn.report.replicas import source_rows

log = job_setup(snakemake.log[0], name="findings")
p, inp = snakemake.params, snakemake.input
spec = BootstrapSpec.from_config(p.bootstrap)
numbers = RunNumbers(
    scores=source_rows(pd.concat([pd.read_csv(path) for path in inp.scores], ignore_index=True)),
    replicates={tuple(key): Replicates.load(path) for key, path in zip(p.replicate_keys, inp.replicates)},
    table2=pd.read_csv(inp.table2), correlation=pd.read_csv(inp.correlation), models=p.models,
    datasets=p.datasets, metrics=p.metrics, level=spec.level, method=spec.interval)
header = (f"Models {', '.join(f'{m} ({a})' for m, a in p.models.items())}; datasets {', '.join(p.datasets)}; "
          f"metrics {', '.join(p.metrics)}. Intervals: {spec.describe()}; a difference counts when its interval "
          f"excludes 0.")
found = findings(numbers)
noise = noise_floor(numbers)
recipes = snakemake.input.get("recipes")  # recipes of one architecture side by side: [] or [the table]
if recipes:
    from featdyn.report.recipes import recipe_findings

    found += recipe_findings(pd.read_csv(recipes if isinstance(recipes, str) else recipes[0]))
write_text(snakemake.output.md, to_markdown(found, header, noise))
write_text(snakemake.output.rst, to_rst(found, header, noise))
for f in found:
    log.info("(%s) %s: %s (%s)", f.key, f.title, f.verdict, f.tally())
