# Stage 3: the probe set's feature maps of each analysed epoch, one Zarr store per checkpoint.


rule extract:
    input:
        unpack(lambda w: data_files(w.dataset)),
        # the file whose sha256 the store records; the similarity rules hash the same checkpoint_file
        checkpoint=lambda w: checkpoint_file(w.model, w.dataset, w.epoch),
    output:
        directory("results/activations/{model}/{dataset}/epoch_{epoch}.zarr"),
    log:
        "results/logs/extract/{model}/{dataset}/epoch_{epoch}.log",
    conda:
        "../../envs/featdyn.yaml"
    threads: 4
    resources:
        mem_mb=8000,
        gpu=1,
    params:
        layers=lambda w: fdconfig.layers_of(config, w.model),
        extraction=config["extraction"],
        device=config["device"],
    script:
        "../scripts/extract.py"
