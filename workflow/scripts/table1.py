from featdyn.atomic import write_csv, write_text
from featdyn.progress import job_setup
from featdyn.report.tables import html_page, read_epoch_rows, table1, table1_best, table1_caption, to_html, to_latex, to_markdown

log = job_setup(snakemake.log[0], name="table1")
p, out = snakemake.params, snakemake.output
rows = read_epoch_rows(snakemake.input)
write_csv(rows, out.csv)
t1, best, caption = table1(rows, p.models, p.datasets), table1_best(rows, p.models, p.datasets), table1_caption(rows)
title = "Table 1: train / test accuracy (%) after the last epoch"
write_text(out.md, to_markdown(t1, title, best, caption))
write_text(out.tex, to_latex(t1, caption, "tab:featdyn-accuracy", best))
write_text(out.html, html_page("Table 1", [to_html(t1, title, best, caption)]))
