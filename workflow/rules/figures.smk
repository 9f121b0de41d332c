# Stage 6: the paper's figures.


rule similarity_curves:
    input:
        lambda w: [f"results/scores/{s}/{w.model}/{d}.csv" for s in METRICS for d in DATASETS],
    output:
        report(
            "results/figures/similarity_{model}.png",
            caption="../report/similarity.rst",
            category="Figures",
            subcategory="{model}",
        ),
    log:
        "results/logs/figures/similarity_{model}.log",
    benchmark:
        "results/benchmarks/figures/similarity_{model}.tsv"
    conda:
        "../../envs/featdyn.yaml"
    params:
        code=script_code("similarity_curves.py"),
    script:
        "../scripts/similarity_curves.py"
