# Stage 5: the paper's Table 1 (accuracy), Table 2 (reusability) and the agreement of the metrics.


rule table1:
    input:
        [f"results/checkpoints/{m}/{d}/epoch_{e}.json" for m, d in RUNS for e in range(final_epoch(m, d) + 1)],
    output:
        csv=report("results/tables/table1_accuracy.csv", caption="../report/table1.rst", category="Tables"),
        md="results/tables/table1_accuracy.md",
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
        ALL_SCORES,
    output:
        csv=report("results/tables/table2_reusability.csv", caption="../report/table2.rst", category="Tables"),
        md="results/tables/table2_reusability.md",
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
        code=script_code("table2.py"),
    script:
        "../scripts/table2.py"


rule metric_correlation:
    input:
        scores=ALL_SCORES,
        filters=FILTER_TABLES,
    output:
        report("results/tables/metric_correlation.csv", caption="../report/correlation.rst", category="Tables"),
    log:
        "results/logs/tables/metric_correlation.log",
    benchmark:
        "results/benchmarks/tables/metric_correlation.tsv"
    conda:
        "../../envs/featdyn.yaml"
    params:
        code=script_code("metric_correlation.py"),
    script:
        "../scripts/metric_correlation.py"
