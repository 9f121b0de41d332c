# Stage 6: the paper's figures.


rule similarity_curves:
    input:
        lambda w: [f"results/scores/{s}/{w.model}/{d}.csv" for s in METRICS for d in DATASETS],
    output:
        png=report(
            "results/figures/similarity_{model}.png",
            caption="../report/similarity.rst",
            category="Figures",
            subcategory="{model}",
        ),
        pdf="results/figures/similarity_{model}.pdf",
    log:
        "results/logs/figures/similarity_{model}.log",
    benchmark:
        "results/benchmarks/figures/similarity_{model}.tsv"
    conda:
        "../../envs/featdyn.yaml"
    params:
        datasets=DATASETS,
        code=script_code("similarity_curves.py"),
    script:
        "../scripts/similarity_curves.py"


# The qualitative half (the paper's Figs. 5-8), one job per (model, dataset): which units to show
# (written down with the reasons), the class-average patches and the sample heatmaps, read from the
# image cache and the existing stores. One job: most of its time is importing torch, once. Only
# this rule reads the visualize block, so editing the block reruns only it.


rule visualize:
    input:
        unpack(visualize_inputs),
    output:
        units=report(
            units_table("{model}", "{dataset}"),
            caption="../report/units.rst",
            category="Figures",
            subcategory="{model}",
        ),
        patches=report(
            "results/figures/patches_{model}_{dataset}.png",
            caption="../report/patches.rst",
            category="Figures",
            subcategory="{model}",
        ),
        patches_pdf="results/figures/patches_{model}_{dataset}.pdf",
        heatmaps=report(
            "results/figures/heatmaps_{model}_{dataset}.png",
            caption="../report/heatmaps.rst",
            category="Figures",
            subcategory="{model}",
        ),
        heatmaps_pdf="results/figures/heatmaps_{model}_{dataset}.pdf",
    log:
        "results/logs/figures/visualize_{model}_{dataset}.log",
    benchmark:
        "results/benchmarks/figures/visualize_{model}_{dataset}.tsv"
    conda:
        "../../envs/featdyn.yaml"
    params:
        visualize=VISUALIZE,
        rank_metric=RANK_METRIC,
        epochs=lambda w: visual_epochs(w.model, w.dataset),
        last_epoch=lambda w: analysed_epochs(w.model, w.dataset)[-1],
        width=model_width,
        datasets=DATASETS,
        code=script_code("visualize.py"),
    script:
        "../scripts/visualize.py"
