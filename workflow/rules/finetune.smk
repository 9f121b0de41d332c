# Stage 2: source weights, then one fine-tuning job per epoch (epoch e resumes epoch e-1).


localrules:
    fetch_weights,


# A localrule: cluster login nodes have internet where compute nodes often do not.
rule fetch_weights:
    output:
        "results/weights/{model}.pt",
    params:
        arch=lambda w: config["models"][w.model]["arch"],
        weights=lambda w: config["models"][w.model].get("weights", "IMAGENET1K_V1"),
        seed=config["seed"],
    log:
        "results/logs/fetch_weights/{model}.log",
    conda:
        "../../envs/featdyn.yaml"
    script:
        "../scripts/fetch_weights.py"


def finetune_inputs(wildcards):
    inputs = data_files(wildcards.dataset)
    epoch = int(wildcards.epoch)
    if epoch == 0:
        inputs["weights"] = f"results/weights/{wildcards.model}.pt"
    else:
        inputs["previous"] = checkpoint_file(wildcards.model, wildcards.dataset, epoch - 1)
    return inputs


rule finetune_epoch:
    input:
        unpack(finetune_inputs),
    output:
        checkpoint="results/checkpoints/{model}/{dataset}/epoch_{epoch}.pt",
        metrics="results/checkpoints/{model}/{dataset}/epoch_{epoch}.json",
    params:
        arch=lambda w: config["models"][w.model]["arch"],
        training=training_params,
        device=config["device"],
    threads: 4
    resources:
        mem_mb=8000,
        gpu=1,
    log:
        "results/logs/finetune_epoch/{model}/{dataset}/epoch_{epoch}.log",
    conda:
        "../../envs/featdyn.yaml"
    script:
        "../scripts/finetune_epoch.py"
