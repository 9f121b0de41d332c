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
    conda:
        "../../envs/featdyn.yaml"
    params:
        datasets=DATASETS,
    script:
        "../scripts/similarity_curves.py"


# The qualitative half (the paper's Figs. 5-8), per (model, dataset): which units to show (written
# down with the reasons), then the class-average patches and the sample heatmaps, read from the
# image cache and the existing stores. Only these three read the visualize block.


rule choose_units:
    input:
        unpack(units_inputs),
    output:
        report(
            units_table("{model}", "{dataset}"),
            caption="../report/units.rst",
            category="Figures",
            subcategory="{model}",
        ),
    log:
        "results/logs/figures/units_{model}_{dataset}.log",
    conda:
        "../../envs/featdyn.yaml"
    params:
        visualize=VISUALIZE,
        rank_metric=RANK_METRIC,
        last_epoch=lambda w: analysed_epochs(w.model, w.dataset)[-1],
    script:
        "../scripts/choose_units.py"


rule class_patches:
    input:
        unpack(visual_inputs),
    output:
        png=report(
            "results/figures/patches_{model}_{dataset}.png",
            caption="../report/patches.rst",
            category="Figures",
            subcategory="{model}",
        ),
        pdf="results/figures/patches_{model}_{dataset}.pdf",
    log:
        "results/logs/figures/patches_{model}_{dataset}.log",
    conda:
        "../../envs/featdyn.yaml"
    params:
        epochs=lambda w: visual_epochs(w.model, w.dataset),
        width=model_width,
        datasets=DATASETS,
    script:
        "../scripts/class_patches.py"


rule sample_heatmaps:
    input:
        unpack(visual_inputs),
    output:
        png=report(
            "results/figures/heatmaps_{model}_{dataset}.png",
            caption="../report/heatmaps.rst",
            category="Figures",
            subcategory="{model}",
        ),
        pdf="results/figures/heatmaps_{model}_{dataset}.pdf",
    log:
        "results/logs/figures/heatmaps_{model}_{dataset}.log",
    conda:
        "../../envs/featdyn.yaml"
    params:
        epochs=lambda w: visual_epochs(w.model, w.dataset),
        width=model_width,
        datasets=DATASETS,
    script:
        "../scripts/sample_heatmaps.py"
