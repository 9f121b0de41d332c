# featdyn: how a pretrained CNN's internal features change, epoch by epoch, while it is fine-tuned.
# Entry point: config, validation, rule modules, the target rule. See README.md.
# Settings for every run (rerun triggers, retries of incomplete jobs) are in profiles/default/,
# which Snakemake loads by itself; the SLURM profile is profiles/slurm/.
from snakemake.utils import min_version, validate

min_version("9.0")


# The demo config, unless config files are given with --configfile: those replace it rather than
# being merged into it (the demo's models and datasets would otherwise join every other run).
if not getattr(workflow, "overwrite_configfiles", None):

    configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    model="|".join(MODELS),
    dataset="|".join(DATASETS),
    metric="|".join(METRICS),
    epoch=r"\d+",


include: "workflow/rules/data.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/similarity.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        "results/tables/table1_accuracy.csv",
        "results/tables/table1_accuracy.md",
        "results/tables/table2_reusability.csv",
        "results/tables/table2_reusability.md",
        "results/tables/metric_correlation.csv",
        expand("results/figures/similarity_{model}.png", model=MODELS),
        kept_resume_states(),
