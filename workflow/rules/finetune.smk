# Stage 2: source weights, then one fine-tuning job per epoch (epoch e resumes epoch e-1).


localrules:
    fetch_weights,


# A localrule: cluster login nodes have internet where compute nodes often do not.
rule fetch_weights:
    output:
        "results/weights/{model}.pt",
    log:
        "results/logs/fetch_weights/{model}.log",
    benchmark:
        "results/benchmarks/fetch_weights/{model}.tsv"
    conda:
        "../../envs/featdyn.yaml"
    params:
        arch=lambda w: config["models"][w.model]["arch"],
        weights=lambda w: config["models"][w.model]["weights"],
        width=model_width,
        seed=config["seed"],
        code=script_code("fetch_weights.py"),
    script:
        "../scripts/fetch_weights.py"


# The checkpoint (weights, kept for every epoch) and the resume state (the optimizer state: only the
# next epoch reads it, so temp(); the last epoch's is kept by the default target). The params
# hold only what this epoch's result depends on: a new lr reruns epochs >= 1, not epoch 0; more
# epochs add jobs without retraining; eval_batch_size and device are read from the config by the
# script and rerun nothing.
rule finetune_epoch:
    input:
        unpack(finetune_inputs),
    output:
        checkpoint="results/checkpoints/{model}/{dataset}/epoch_{epoch}.pt",
        state=temp("results/checkpoints/{model}/{dataset}/epoch_{epoch}.resume.pt"),
        metrics="results/checkpoints/{model}/{dataset}/epoch_{epoch}.json",
    log:
        "results/logs/finetune_epoch/{model}/{dataset}/epoch_{epoch}.log",
    benchmark:
        "results/benchmarks/finetune_epoch/{model}/{dataset}/epoch_{epoch}.tsv"
    conda:
        "../../envs/featdyn.yaml"
    # On a GPU: one thread launches kernels, the others gather batches from the cache. On a CPU
    # every thread computes. Host memory: weights and optimizer state in and out (VGG19: 0.55 GB
    # and, with Adam, 1.1 GB) plus torch and the CUDA context; a retry gets twice as much.
    threads: config["threads"]["finetune_epoch"]
    resources:
        mem_mb=retry_mem(12000),
        gpu=1,
    params:
        arch=lambda w: config["models"][w.model]["arch"],
        width=model_width,
        training=epoch_training,
        code=script_code("finetune_epoch.py"),
    script:
        "../scripts/finetune_epoch.py"
