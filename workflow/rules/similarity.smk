# Stage 4: float64 statistics of (source, epoch) per layer, then one score table per metric.
# Each metric's parameter block is a `params` entry of its own score job, so changing or adding
# one metric reruns only that metric and what reads it. Filter-granularity metrics compare the
# stores' maps directly, one GPU job per (metric, model, dataset, epoch).

FILTER_METRICS = [m for m in METRICS if fdconfig.metric_params(config, m)["granularity"] == "filter"]


def filter_table(metric, model, dataset, epoch):
    return f"results/filters/{metric}/{model}/{dataset}/epoch_{epoch}.csv"


rule source_stats:
    input:
        store=lambda w: store_dir(w.model, w.dataset, 0),
        summary=lambda w: data_files(w.dataset)["summary"],
    output:
        "results/stats/{model}/{dataset}/source.npz",
    params:
        device=config["device"],
    threads: 2
    resources:
        mem_mb=4000,
        gpu=1,
    log:
        "results/logs/source_stats/{model}/{dataset}.log",
    conda:
        "../../envs/featdyn.yaml"
    script:
        "../scripts/source_stats.py"


rule layer_stats:
    input:
        source_store=lambda w: store_dir(w.model, w.dataset, 0),
        store=lambda w: store_dir(w.model, w.dataset, w.epoch),
        source_stats="results/stats/{model}/{dataset}/source.npz",
        summary=lambda w: data_files(w.dataset)["summary"],
    output:
        "results/stats/{model}/{dataset}/epoch_{epoch}.npz",
    params:
        device=config["device"],
    threads: 2
    resources:
        mem_mb=4000,
        gpu=1,
    log:
        "results/logs/layer_stats/{model}/{dataset}/epoch_{epoch}.log",
    conda:
        "../../envs/featdyn.yaml"
    script:
        "../scripts/layer_stats.py"


rule filter_scores:
    input:
        source_store=lambda w: store_dir(w.model, w.dataset, 0),
        store=lambda w: store_dir(w.model, w.dataset, w.epoch),
        summary=lambda w: data_files(w.dataset)["summary"],
    output:
        filter_table("{metric}", "{model}", "{dataset}", "{epoch}"),
    params:
        metric=metric_block,
        device=config["device"],
    wildcard_constraints:
        metric="|".join(FILTER_METRICS) or "(?!)",
    threads: 2
    resources:
        mem_mb=8000,
        gpu=1,
    log:
        "results/logs/filter_scores/{metric}/{model}/{dataset}/epoch_{epoch}.log",
    conda:
        "../../envs/featdyn.yaml"
    script:
        "../scripts/filter_scores.py"


def score_inputs(wildcards):
    epochs = analysed_epochs(wildcards.model, wildcards.dataset)
    if wildcards.metric in FILTER_METRICS:
        return {"epochs": [filter_table(wildcards.metric, wildcards.model, wildcards.dataset, e) for e in epochs]}
    return {
        "source": f"results/stats/{wildcards.model}/{wildcards.dataset}/source.npz",
        "epochs": [f"results/stats/{wildcards.model}/{wildcards.dataset}/epoch_{e}.npz" for e in epochs],
    }


rule score:
    input:
        unpack(score_inputs),
    output:
        "results/scores/{metric}/{model}/{dataset}.csv",
    params:
        metric=metric_block,
        epochs=lambda w: analysed_epochs(w.model, w.dataset),
        device=config["device"],
    threads: 2
    resources:
        mem_mb=4000,
    log:
        "results/logs/score/{metric}/{model}/{dataset}.log",
    conda:
        "../../envs/featdyn.yaml"
    script:
        "../scripts/score.py"
