# Stage 4: float64 statistics of (source, epoch) per layer, then one score table per metric.
# Each metric's parameter block is a `params` entry of its own score job, so changing or adding
# one metric reruns only that metric and what reads it. Filter-granularity metrics compare the
# stores' maps directly, one GPU job per (metric, model, dataset, epoch). Every store is checked
# against what the job expects (epoch, the sha256 of its checkpoint, model, dataset, layers, probe set).
# Every statistics job also keeps its statistics per image group (`groups` output) for the bootstrap
# intervals of the scores. Each training replicate ({rep}: empty or a rep<r> folder) has its own statistics
# against its own epoch 0; `replicate_stats` compares two replicates at the same epoch (the noise
# floor) and `null_stats` a layer with itself, probe images permuted (the permutation null).


rule source_stats:
    input:
        store=lambda w: store_dir(w.model, w.dataset, 0, w.rep),
        summary=lambda w: data_files(w.dataset)["summary"],
        checkpoint=lambda w: checkpoint_file(w.model, w.dataset, 0, w.rep),
    output:
        "results/stats/{model}/{dataset}{rep}/source.npz",
        groups=stats_groups("{model}", "{dataset}", "source", "{rep}"),
    log:
        "results/logs/source_stats/{model}/{dataset}{rep}.log",
    benchmark:
        "results/benchmarks/source_stats/{model}/{dataset}{rep}.tsv"
    conda:
        "../../envs/featdyn.yaml"
    threads: config["threads"]["source_stats"]
    resources:
        mem_mb=retry_mem(4000),
        gpu=1,
    params:
        layers=lambda w: fdconfig.layers_of(config, w.model),
        groups=BOOTSTRAP.stored_groups,
        tokens=fdconfig.token_readings(config),
        code=script_code("source_stats.py"),
    script:
        "../scripts/source_stats.py"


rule layer_stats:
    input:
        source_store=lambda w: store_dir(w.model, w.dataset, 0, w.rep),
        store=lambda w: store_dir(w.model, w.dataset, w.epoch, w.rep),
        source_stats="results/stats/{model}/{dataset}{rep}/source.npz",
        source_groups=stats_groups("{model}", "{dataset}", "source", "{rep}"),
        summary=lambda w: data_files(w.dataset)["summary"],
        source_checkpoint=lambda w: checkpoint_file(w.model, w.dataset, 0, w.rep),
        checkpoint=lambda w: checkpoint_file(w.model, w.dataset, w.epoch, w.rep),
    output:
        "results/stats/{model}/{dataset}{rep}/epoch_{epoch}.npz",
        groups=stats_groups("{model}", "{dataset}", "epoch_{epoch}", "{rep}"),
    log:
        "results/logs/layer_stats/{model}/{dataset}{rep}/epoch_{epoch}.log",
    benchmark:
        "results/benchmarks/layer_stats/{model}/{dataset}{rep}/epoch_{epoch}.tsv"
    conda:
        "../../envs/featdyn.yaml"
    threads: config["threads"]["layer_stats"]
    resources:
        mem_mb=retry_mem(4000),
        gpu=1,
    params:
        layers=lambda w: fdconfig.layers_of(config, w.model),
        groups=BOOTSTRAP.stored_groups,
        tokens=fdconfig.token_readings(config),
        code=script_code("layer_stats.py"),
    script:
        "../scripts/layer_stats.py"


rule filter_scores:
    input:
        source_store=lambda w: store_dir(w.model, w.dataset, 0, w.rep),
        store=lambda w: store_dir(w.model, w.dataset, w.epoch, w.rep),
        summary=lambda w: data_files(w.dataset)["summary"],
        source_checkpoint=lambda w: checkpoint_file(w.model, w.dataset, 0, w.rep),
        checkpoint=lambda w: checkpoint_file(w.model, w.dataset, w.epoch, w.rep),
    output:
        "results/filters/{metric}/{model}/{dataset}{rep}/epoch_{epoch}.csv",
        groups=filter_groups("{metric}", "{model}", "{dataset}", "{epoch}", "{rep}"),
    log:
        "results/logs/filter_scores/{metric}/{model}/{dataset}{rep}/epoch_{epoch}.log",
    benchmark:
        "results/benchmarks/filter_scores/{metric}/{model}/{dataset}{rep}/epoch_{epoch}.tsv"
    wildcard_constraints:
        metric="|".join(FILTER_METRICS) or "(?!)",
    conda:
        "../../envs/featdyn.yaml"
    threads: config["threads"]["filter_scores"]
    resources:
        mem_mb=retry_mem(8000),
        gpu=1,
    params:
        metric=metric_block,
        layers=lambda w: fdconfig.layers_of(config, w.model),
        groups=BOOTSTRAP.stored_groups,
        code=script_code("filter_scores.py"),
    script:
        "../scripts/filter_scores.py"


rule replicate_stats:
    input:
        store_a=lambda w: store_dir(w.model, w.dataset, w.epoch, rep_suffix(w.a)),
        store_b=lambda w: store_dir(w.model, w.dataset, w.epoch, rep_suffix(w.b)),
        summary=lambda w: data_files(w.dataset)["summary"],
        checkpoint_a=lambda w: checkpoint_file(w.model, w.dataset, w.epoch, rep_suffix(w.a)),
        checkpoint_b=lambda w: checkpoint_file(w.model, w.dataset, w.epoch, rep_suffix(w.b)),
    output:
        "results/stats/{model}/{dataset}/replicates/{a}-{b}/epoch_{epoch}.npz",
    log:
        "results/logs/replicate_stats/{model}/{dataset}/{a}-{b}/epoch_{epoch}.log",
    benchmark:
        "results/benchmarks/replicate_stats/{model}/{dataset}/{a}-{b}/epoch_{epoch}.tsv"
    wildcard_constraints:
        a=r"\d+",
        b=r"\d+",
    conda:
        "../../envs/featdyn.yaml"
    threads: config["threads"]["layer_stats"]
    resources:
        mem_mb=retry_mem(4000),
        gpu=1,
    params:
        layers=lambda w: fdconfig.layers_of(config, w.model),
        tokens=fdconfig.token_readings(config),
        code=script_code("replicate_stats.py"),
    script:
        "../scripts/replicate_stats.py"


rule replicate_filter_scores:
    input:
        store_a=lambda w: store_dir(w.model, w.dataset, w.epoch, rep_suffix(w.a)),
        store_b=lambda w: store_dir(w.model, w.dataset, w.epoch, rep_suffix(w.b)),
        summary=lambda w: data_files(w.dataset)["summary"],
        checkpoint_a=lambda w: checkpoint_file(w.model, w.dataset, w.epoch, rep_suffix(w.a)),
        checkpoint_b=lambda w: checkpoint_file(w.model, w.dataset, w.epoch, rep_suffix(w.b)),
    output:
        "results/filters/{metric}/{model}/{dataset}/replicates/{a}-{b}/epoch_{epoch}.csv",
    log:
        "results/logs/replicate_filter_scores/{metric}/{model}/{dataset}/{a}-{b}/epoch_{epoch}.log",
    benchmark:
        "results/benchmarks/replicate_filter_scores/{metric}/{model}/{dataset}/{a}-{b}/epoch_{epoch}.tsv"
    wildcard_constraints:
        metric="|".join(FILTER_METRICS) or "(?!)",
        a=r"\d+",
        b=r"\d+",
    conda:
        "../../envs/featdyn.yaml"
    threads: config["threads"]["filter_scores"]
    resources:
        mem_mb=retry_mem(8000),
        gpu=1,
    params:
        metric=metric_block,
        layers=lambda w: fdconfig.layers_of(config, w.model),
        code=script_code("replicate_filter_scores.py"),
    script:
        "../scripts/replicate_filter_scores.py"


rule null_stats:
    input:
        store=lambda w: store_dir(w.model, w.dataset, 0),
        source_stats=lambda w: source_stats_file(w.model, w.dataset),
        summary=lambda w: data_files(w.dataset)["summary"],
        checkpoint=lambda w: checkpoint_file(w.model, w.dataset, 0),
    output:
        "results/stats/{model}/{dataset}/null.npz",
    log:
        "results/logs/null_stats/{model}/{dataset}.log",
    benchmark:
        "results/benchmarks/null_stats/{model}/{dataset}.tsv"
    conda:
        "../../envs/featdyn.yaml"
    threads: config["threads"]["layer_stats"]
    resources:
        mem_mb=retry_mem(4000),
        gpu=1,
    params:
        layers=lambda w: fdconfig.layers_of(config, w.model),
        null=NULL,
        tokens=fdconfig.token_readings(config),
        code=script_code("null_stats.py"),
    script:
        "../scripts/null_stats.py"


rule score:
    input:
        unpack(score_inputs),
    output:
        "results/scores/{metric}/{model}/{dataset}.csv",
        replicates=replicates_file("{metric}", "{model}", "{dataset}"),
    log:
        "results/logs/score/{metric}/{model}/{dataset}.log",
    benchmark:
        "results/benchmarks/score/{metric}/{model}/{dataset}.tsv"
    conda:
        "../../envs/featdyn.yaml"
    # The bootstrap evaluates the metric once per resample, layer and epoch: on the GPU when there
    # is one, else on one CPU thread (small C x C decompositions; two score jobs share two cores),
    # with the per-group statistics of a whole epoch in memory.
    threads: config["threads"]["score"]
    resources:
        mem_mb=retry_mem(8000),
        gpu=1,
    params:
        metric=metric_block,
        epochs=lambda w: analysed_epochs(w.model, w.dataset),
        k=lambda w: replicates(w.model, w.dataset),
        null=NULL,
        bootstrap=asdict(BOOTSTRAP),
        code=script_code("score.py"),
    script:
        "../scripts/score.py"
