# Stage 5: the paper's Table 1 (accuracy), Table 2 (reusability, with its per-layer breakdown and
# bootstrap intervals), the agreement of the metrics, and the check of the paper's findings.
# Each table is written as tidy CSV, Markdown, LaTeX (booktabs) and HTML (shown in the report).


rule table1:
    input:
        [
            paths.EPOCH_METRICS.format(model=m, dataset=d, rep=r, epoch=e)
            for m, d, r in RUN_REPS
            for e in range(final_epoch(m, d) + 1)
        ],
    output:
        csv="results/tables/table1_accuracy.csv",
        md="results/tables/table1_accuracy.md",
        tex="results/tables/table1_accuracy.tex",
        html=report("results/tables/table1_accuracy.html", caption="../report/table1.rst", category="2 Tables"),
    log:
        "results/logs/tables/table1.log",
    benchmark:
        "results/benchmarks/tables/table1.tsv"
    conda:
        "../../envs/featdyn.yaml"
    params:
        models=MODELS,
        datasets=DATASETS,
        code=script_code("table1.py"),
    script:
        "../scripts/table1.py"


rule table2:
    input:
        scores=ALL_SCORES,
        replicates=ALL_REPLICATES,
    output:
        csv="results/tables/table2_reusability.csv",
        md="results/tables/table2_reusability.md",
        tex="results/tables/table2_reusability.tex",
        html=report("results/tables/table2_reusability.html", caption="../report/table2.rst", category="2 Tables"),
        layers_csv="results/tables/table2_layers.csv",
        layers_md="results/tables/table2_layers.md",
        layers_tex="results/tables/table2_layers.tex",
        layers_html=report(
            "results/tables/table2_layers.html", caption="../report/table2_layers.rst", category="2 Tables"
        ),
    log:
        "results/logs/tables/table2.log",
    benchmark:
        "results/benchmarks/tables/table2.tsv"
    conda:
        "../../envs/featdyn.yaml"
    params:
        models=MODELS,
        datasets=DATASETS,
        metrics=METRICS,
        replicate_keys=REPLICATE_KEYS,
        bootstrap=asdict(BOOTSTRAP),
        code=script_code("table2.py"),
    script:
        "../scripts/table2.py"


rule metric_correlation:
    input:
        scores=ALL_SCORES,
        filters=FILTER_TABLES,
        replicates=ALL_REPLICATES,
    output:
        csv="results/tables/metric_correlation.csv",
        md="results/tables/metric_correlation.md",
        html=report("results/tables/metric_correlation.html", caption="../report/correlation.rst", category="2 Tables"),
    log:
        "results/logs/tables/metric_correlation.log",
    benchmark:
        "results/benchmarks/tables/metric_correlation.tsv"
    conda:
        "../../envs/featdyn.yaml"
    params:
        replicate_keys=REPLICATE_KEYS,
        code=script_code("metric_correlation.py"),
    script:
        "../scripts/metric_correlation.py"


rule findings:
    input:
        scores=ALL_SCORES,
        replicates=ALL_REPLICATES,
        table2="results/tables/table2_reusability.csv",
        correlation="results/tables/metric_correlation.csv",
        recipes=RECIPE_OUTPUTS[:1],
    output:
        md=report("results/summary.md", caption="../report/findings.rst", category="1 Findings"),
        rst="results/report/findings.rst",
    log:
        "results/logs/tables/findings.log",
    benchmark:
        "results/benchmarks/tables/findings.tsv"
    conda:
        "../../envs/featdyn.yaml"
    params:
        models={m: config["models"][m]["arch"] for m in MODELS},
        datasets=DATASETS,
        metrics=METRICS,
        replicate_keys=REPLICATE_KEYS,
        bootstrap=asdict(BOOTSTRAP),
        code=script_code("findings.py"),
    script:
        "../scripts/findings.py"
