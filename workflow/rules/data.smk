# Stage 1: target datasets -> split manifest + uint8 image cache.


rule materialise_demo:
    output:
        directory("results/data/{dataset}/images"),
    params:
        demo=lambda w: config["datasets"][w.dataset]["demo"],
        seed=config["seed"],
    log:
        "results/logs/materialise_demo/{dataset}.log",
    conda:
        "../../envs/featdyn.yaml"
    script:
        "../scripts/materialise_demo.py"


def dataset_roots(wildcards):
    """The folders prepare_dataset reads: {'root': ...} or {'train': ..., 'test': ...}."""
    spec = config["datasets"][wildcards.dataset]
    kind = fdconfig.dataset_kind(wildcards.dataset, spec)
    if kind == "demo":
        return {"root": f"results/data/{wildcards.dataset}/images"}
    if kind == "tree":
        return {"root": spec["path"]}
    if kind == "pair":
        return {"train": spec["train"], "test": spec["test"]}
    raise WorkflowError(f"datasets.{wildcards.dataset}: url datasets are not supported yet")


def prepare_inputs(wildcards):
    spec = config["datasets"][wildcards.dataset]
    if "demo" in spec:
        return {"images": f"results/data/{wildcards.dataset}/images"}
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
    threads: 4
    resources:
        mem_mb=2000,
    log:
        "results/logs/prepare_dataset/{dataset}.log",
    conda:
        "../../envs/featdyn.yaml"
    script:
        "../scripts/prepare_dataset.py"
