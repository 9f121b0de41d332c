# Fine-tuning recipes side by side (featdyn.report.recipes): model entries of one architecture with
# different training blocks, compared per dataset (test accuracy against distance to the source).
# Only where the config has two or more entries of one architecture.


rule recipes:
    input:
        accuracy="results/tables/table1_accuracy.csv",
        scores=[paths.SCORES.format(metric=s, model=m, dataset=d) for s, m, d in RECIPE_KEYS],
        replicates=[replicates_file(s, m, d) for s, m, d in RECIPE_KEYS],
    output:
        csv="results/tables/recipes.csv",
        md="results/tables/recipes.md",
        html=report("results/tables/recipes.html", caption="../report/recipes.rst", category="2 Tables"),
        png=report("results/figures/recipes.png", caption="../report/recipes.rst", category="Figures"),
        pdf="results/figures/recipes.pdf",
    log:
        "results/logs/tables/recipes.log",
    benchmark:
        "results/benchmarks/tables/recipes.tsv"
    conda:
        "../../envs/featdyn.yaml"
    params:
        groups=RECIPE_GROUPS,
        labels=RECIPE_LABELS,
        metrics=METRICS,
        replicate_keys=RECIPE_KEYS,
        bootstrap=asdict(BOOTSTRAP),
        code=script_code("recipes.py"),
    script:
        "../scripts/recipes.py"
