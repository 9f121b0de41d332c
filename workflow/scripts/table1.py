from featdyn.atomic import write_text
from featdyn.progress import job_setup
from featdyn.tables import read_epoch_rows, table1, to_markdown, write_csv

log = job_setup(snakemake.log[0], name="table1")
rows = read_epoch_rows(snakemake.input)
write_csv(rows, snakemake.output.csv)
write_text(snakemake.output.md, to_markdown(table1(rows, snakemake.params.models, snakemake.params.datasets),
                                            "Table 1: train / test accuracy (%) after the last epoch"))
