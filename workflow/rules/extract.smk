# Stage 3: the probe set's feature maps of each analysed epoch, one Zarr store per checkpoint.
# retention.activations: drop marks the stores temp(): deleted once every job reading them has run.


rule extract:
    input:
        **data_files("{dataset}"),
        # the file whose sha256 the store records; the similarity rules hash the same checkpoint_file
        checkpoint=checkpoint_file("{model}", "{dataset}", "{epoch}"),
    output:
        retained(directory("results/activations/{model}/{dataset}/epoch_{epoch}.zarr"), "activations"),
    log:
        "results/logs/extract/{model}/{dataset}/epoch_{epoch}.log",
    benchmark:
        "results/benchmarks/extract/{model}/{dataset}/epoch_{epoch}.tsv"
    conda:
        "../../envs/featdyn.yaml"
    threads: config["threads"]["extract"]
    resources:
        mem_mb=retry_mem(8000),
        gpu=1,
    params:
        layers=lambda w: fdconfig.layers_of(config, w.model),
        layout=lambda w: config["models"][w.model].get("layout"),
        extraction=config["extraction"],
        code=script_code("extract.py"),
    script:
        "../scripts/extract.py"
