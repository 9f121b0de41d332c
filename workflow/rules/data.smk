# Stage 1: target datasets -> split manifest + uint8 image cache.


localrules:
    download_dataset,


rule materialise_demo:
    output:
        directory("results/data/{dataset}/images"),
    log:
        "results/logs/materialise_demo/{dataset}.log",
    benchmark:
        "results/benchmarks/materialise_demo/{dataset}.tsv"
    conda:
        "../../envs/featdyn.yaml"
    resources:
        mem_mb=retry_mem(1000),
    params:
        demo=lambda w: config["datasets"][w.dataset]["demo"],
        seed=config["seed"],
        code=script_code("materialise_demo.py"),
    script:
        "../scripts/materialise_demo.py"


# A localrule: cluster login nodes have internet where compute nodes often do not. The archive is
# checked against its sha256 before it is unpacked; both steps write under temporary names.
rule download_dataset:
    output:
        directory("results/data/{dataset}/raw"),
    log:
        "results/logs/download_dataset/{dataset}.log",
    benchmark:
        "results/benchmarks/download_dataset/{dataset}.tsv"
    conda:
        "../../envs/featdyn.yaml"
    params:
        url=lambda w: config["datasets"][w.dataset]["url"],
        sha256=lambda w: config["datasets"][w.dataset]["sha256"],
        code=script_code("download_dataset.py"),
    script:
        "../scripts/download_dataset.py"


rule prepare_dataset:
    input:
        unpack(prepare_inputs),
    output:
        manifest="results/data/{dataset}/manifest.csv",
        cache="results/data/{dataset}/cache.npy",
        summary="results/data/{dataset}/dataset.json",
    log:
        "results/logs/prepare_dataset/{dataset}.log",
    benchmark:
        "results/benchmarks/prepare_dataset/{dataset}.tsv"
    conda:
        "../../envs/featdyn.yaml"
    # Decoding runs on every thread; memory stays small (the cache is filled through a memory map).
    threads: config["threads"]["prepare_dataset"]
    resources:
        mem_mb=retry_mem(4000),
    params:
        roots=dataset_roots,
        images=dataset_images,
        image_size=config["image_size"],
        split=config["split"],
        probe=config["probe"],
        classes=lambda w: config["datasets"][w.dataset].get("classes"),
        class_seed=lambda w: config["datasets"][w.dataset].get("class_seed", config["seed"]),
        code=script_code("prepare_dataset.py"),
    script:
        "../scripts/prepare_dataset.py"
