# featdyn: how a pretrained CNN's internal features change, epoch by epoch, while it is fine-tuned.
# Entry point: config, validation, rule modules, the target rule. See README.md.
# Settings for every run (rerun triggers, retries of incomplete jobs) are in profiles/default/,
# which Snakemake loads by itself; the SLURM profile is profiles/slurm/.
import importlib.util
import os
import sys

from snakemake.utils import min_version, validate

min_version("9.0")

# The library lives in src/; this process imports it from there. A job's script imports featdyn
# from its Python environment: the package `make setup` installed (pip install -e .), or, in an
# environment without featdyn (a --use-conda env), this src/ (Snakemake appends this process's
# sys.path to every script's). common.smk refuses an environment holding another checkout's featdyn.
FEATDYN_SRC = os.path.join(workflow.basedir, "src")
JOB_FEATDYN = importlib.util.find_spec("featdyn")
sys.path.insert(0, FEATDYN_SRC)

# The demo config, unless config files are given with --configfile: those replace it rather than
# being merged into it (the demo's models and datasets would otherwise join every other run).
if not getattr(workflow, "overwrite_configfiles", None):

    configfile: "config/config.yaml"


# Unknown keys first, each with the closest valid one (a misspelt block would silently use defaults).
from featdyn.schema import check_config_keys

check_config_keys(config, os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml"))
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
include: "workflow/rules/cluster.smk"


rule all:
    default_target: True
    input:
        "results/tables/table1_accuracy.csv",
        "results/tables/table1_accuracy.md",
        "results/tables/table2_reusability.csv",
        "results/tables/table2_reusability.md",
        "results/tables/metric_correlation.csv",
        "results/tables/table1_accuracy.tex",
        "results/tables/table2_reusability.tex",
        "results/tables/table2_layers.csv",
        "results/summary.md",
        expand("results/figures/similarity_{model}.{ext}", model=MODELS, ext=("png", "pdf")),
        VISUAL_FIGURES,
        kept_resume_states(),
