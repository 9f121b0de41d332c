# Helpers shared by the rule modules: config resolution and the input functions.
from pathlib import Path

from featdyn import FeatdynError
from featdyn import config as fdconfig

try:
    fdconfig.check(config)
except FeatdynError as exc:
    raise WorkflowError(str(exc)) from None

config = fdconfig.with_defaults(config)

MODELS = list(config["models"])
DATASETS = list(config["datasets"])
METRICS = list(config["metrics"])
RUNS = [(m, d) for m in MODELS for d in DATASETS]


wildcard_constraints:
    model="|".join(MODELS),
    dataset="|".join(DATASETS),
    metric="|".join(METRICS),
    epoch=r"\d+",


def data_dir(dataset):
    return f"results/data/{dataset}"


def data_files(dataset):
    d = data_dir(dataset)
    return {"manifest": f"{d}/manifest.csv", "cache": f"{d}/cache.npy", "summary": f"{d}/dataset.json"}


def training_params(wildcards):
    return fdconfig.training_config(config, wildcards.model, wildcards.dataset)


def final_epoch(model, dataset):
    return fdconfig.training_config(config, model, dataset)["epochs"]


def analysed_epochs(model, dataset):
    return fdconfig.analysed_epochs(config, model, dataset)


def checkpoint_file(model, dataset, epoch):
    return f"results/checkpoints/{model}/{dataset}/epoch_{epoch}.pt"


def store_dir(model, dataset, epoch):
    return f"results/activations/{model}/{dataset}/epoch_{epoch}.zarr"


def metric_block(wildcards):
    return fdconfig.metric_params(config, wildcards.metric)
