# Stage 1: target datasets -> split manifest + uint8 image cache.


localrules:
    download_dataset,


rule materialise_demo:
    output:
        directory("results/data/{dataset}/images"),
    params:
        demo=lambda w: config["datasets"][w.dataset]["demo"],
        seed=config["seed"],
    resources:
        mem_mb=1000,
    log:
        "results/logs/materialise_demo/{dataset}.log",
    conda:
        "../../envs/featdyn.yaml"
    script:
        "../scripts/materialise_demo.py"


# A localrule: cluster login nodes have internet where compute nodes often do not. The archive is
# checked against its sha256 before it is unpacked; both steps write under temporary names.
rule download_dataset:
    output:
        directory("results/data/{dataset}/raw"),
    params:
        url=lambda w: config["datasets"][w.dataset]["url"],
        sha256=lambda w: config["datasets"][w.dataset]["sha256"],
    log:
        "results/logs/download_dataset/{dataset}.log",
    conda:
        "../../envs/featdyn.yaml"
    script:
        "../scripts/download_dataset.py"


def dataset_roots(wildcards):
    """The folders prepare_dataset reads: {'root': ...} or {'train': ..., 'test': ...}."""
    try:
        return fdconfig.dataset_roots(wildcards.dataset, config["datasets"][wildcards.dataset],
                                      data_dir(wildcards.dataset))
    except FeatdynError as exc:
        raise WorkflowError(str(exc)) from None


def prepare_inputs(wildcards):
    spec = config["datasets"][wildcards.dataset]
    if "demo" in spec:
        return {"images": f"{data_dir(wildcards.dataset)}/images"}
    if "url" in spec:
        return {"raw": f"{data_dir(wildcards.dataset)}/raw"}
    return {}


rule prepare_dataset:
    input:
        unpack(prepare_inputs),
    output:
        manifest="results/data/{dataset}/manifest.csv",
        cache="results/data/{dataset}/cache.npy",
        summary="results/data/{dataset}/dataset.json",
    params:
        roots=dataset_roots,
        image_size=config["image_size"],
        split=config["split"],
        probe=config["probe"],
        classes=lambda w: config["datasets"][w.dataset].get("classes"),
        class_seed=lambda w: config["datasets"][w.dataset].get("class_seed", config["seed"]),
    # Decoding runs on every thread; memory stays small (the cache is filled through a memory map).
    threads: 8
    resources:
        mem_mb=4000,
    log:
        "results/logs/prepare_dataset/{dataset}.log",
    conda:
        "../../envs/featdyn.yaml"
    script:
        "../scripts/prepare_dataset.py"
