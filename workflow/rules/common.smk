# Helpers shared by all modules: config resolution and the input functions. All of this runs at
# every parse, including the re-parse that each cluster job does before its own work, so none of it
# imports torch; the config check, which does, runs in the main process only.
import os
from dataclasses import asdict
from pathlib import Path

from snakemake.logging import logger

from featdyn import FeatdynError
from featdyn.spec import config as fdconfig
from featdyn.spec import fingerprints, paths
from featdyn.engine.bootstrap import BootstrapSpec
from featdyn.spec.hyperparams import epoch_params, fresh_optimizer, training_config
from featdyn.spec.recipes import reads_reference
from featdyn.spec.replicates import REP_PATTERN, rep_index, rep_suffix, replicate_pairs, replicates_of

if workflow.is_main_process:
    # JOB_FEATDYN (Snakefile): the featdyn that jobs would import before this process's src/
    if JOB_FEATDYN is not None and JOB_FEATDYN.origin is not None:
        jobs_src = Path(JOB_FEATDYN.origin).resolve().parent.parent
        if jobs_src != Path(FEATDYN_SRC).resolve():
            raise WorkflowError(
                f"jobs would import featdyn from {jobs_src}, not from this workflow's {FEATDYN_SRC}: "
                f"run `pip install -e {REPO}` in this environment, or `export PYTHONPATH={FEATDYN_SRC}`"
            )
    try:
        fdconfig.check(config)
    except FeatdynError as exc:
        raise WorkflowError(str(exc)) from None
    # `layers: auto` (what `preset`, the default, means without a paper preset): resolved by the check, said here
    from featdyn.spec.layer_presets import PRESETS as _PRESETS

    for _name, _spec in config["models"].items():
        if _spec["layers"] == "auto" or (_spec["layers"] == "preset" and _spec["arch"] not in _PRESETS):
            try:
                logger.info(f"models.{_name}.layers (auto): {fdconfig.layers_of(config, _name)}")
            except FeatdynError:
                pass

MODELS = list(config["models"])
DATASETS = list(config["datasets"])
METRICS = list(config["metrics"])
RUNS = [(m, d) for m in MODELS for d in DATASETS]


# Training replicates (featdyn.spec.replicates): k chains per run, differing only in their seed.
# Replicate 0 keeps the paths of a run without replicates; replicate r >= 1 adds a `rep<r>` folder
# after the dataset, through the {rep} wildcard (empty, or a slash and rep<r>).
def replicates(model, dataset):
    return replicates_of(config, model, dataset)


def reps_of(model, dataset):
    """The {rep} values of a run's replicates: empty for replicate 0, then a slash and rep1, rep2, ..."""
    return [rep_suffix(r) for r in range(replicates(model, dataset))]


RUN_REPS = [(m, d, rep) for m, d in RUNS for rep in reps_of(m, d)]


def script_code(name):
    """A digest of workflow/scripts/<name> and of the library modules it imports (featdyn.spec.fingerprints),
    the `params.code` of each script's jobs. Editing that code reruns those jobs and what follows
    them; a fresh clone or a `touch` (same code, new times) reruns nothing."""
    scripts = os.path.join(workflow.basedir, "scripts")
    return fingerprints.code_digest(os.path.join(scripts, name), os.path.join(FEATDYN_SRC, "featdyn"))


def retry_mem(mb):
    """mem_mb of a job: `mb` on the first attempt, twice that on a retry (--retries), and so on."""
    return lambda wildcards, attempt: mb * attempt


def retained(output, what):
    """An output that `retention.<what>: drop` marks temp(): deleted once every job reading it has run."""
    return temp(output) if config["retention"][what] == "drop" else output


def data_dir(dataset):
    return paths.DATA.format(dataset=dataset)


def data_files(dataset):
    return {
        "manifest": paths.MANIFEST.format(dataset=dataset),
        "cache": paths.CACHE.format(dataset=dataset),
        "summary": paths.DATASET_SUMMARY.format(dataset=dataset),
    }


def training_params(wildcards):
    return training_config(config, wildcards.model, wildcards.dataset, rep_index(wildcards.get("rep", "")))


def epoch_training(wildcards):
    """The part of the training block that this epoch's checkpoint depends on (a param: changing
    lr reruns epochs >= 1, not epoch 0; changing epochs or eval_batch_size reruns nothing)."""
    return epoch_params(training_params(wildcards), int(wildcards.epoch))


def final_epoch(model, dataset):
    return training_config(config, model, dataset)["epochs"]


def analysed_epochs(model, dataset):
    return fdconfig.analysed_epochs(config, model, dataset)


def checkpoint_file(model, dataset, epoch, rep=""):
    return paths.CHECKPOINT.format(model=model, dataset=dataset, rep=rep, epoch=epoch)


def resume_file(model, dataset, epoch, rep=""):
    """The optimizer state of an epoch (featdyn.nets.training.resume_path): temp(), read by the next epoch only."""
    return paths.RESUME_STATE.format(model=model, dataset=dataset, rep=rep, epoch=epoch)


def kept_resume_states():
    """The last epoch's resume state of every run, requested by the default target so that it is
    kept: raising training.epochs then continues from it. Not requested where the last checkpoint
    exists without it (dropped by retention.final_state, or deleted), which would retrain the chain."""
    if config["retention"]["final_state"] == "drop":
        return []
    wanted = []
    for m, d, rep in RUN_REPS:
        t = final_epoch(m, d)
        if os.path.exists(resume_file(m, d, t, rep)) or not os.path.exists(checkpoint_file(m, d, t, rep)):
            wanted.append(resume_file(m, d, t, rep))
    return wanted


def store_dir(model, dataset, epoch, rep=""):
    return paths.STORE.format(model=model, dataset=dataset, rep=rep, epoch=epoch)


def metric_block(wildcards):
    return fdconfig.metric_params(config, wildcards.metric)


def dataset_roots(wildcards):
    """The folders prepare_dataset reads: {'root': ...} or {'train': ..., 'test': ...}."""
    try:
        return fdconfig.dataset_roots(
            wildcards.dataset, config["datasets"][wildcards.dataset], data_dir(wildcards.dataset)
        )
    except FeatdynError as exc:
        raise WorkflowError(str(exc)) from None


def dataset_images(wildcards):
    """A digest of the image names in a dataset's own folders (a param: adding or removing images
    reruns prepare_dataset). Demo and url datasets come from a rule's output, tracked as an input."""
    spec = config["datasets"][wildcards.dataset]
    if "demo" in spec or "url" in spec:
        return ""
    return fingerprints.tree_digest(dataset_roots(wildcards))


def prepare_inputs(wildcards):
    spec = config["datasets"][wildcards.dataset]
    if "demo" in spec:
        return {"images": f"{data_dir(wildcards.dataset)}/images"}
    if "url" in spec:
        return {"raw": f"{data_dir(wildcards.dataset)}/raw"}
    return {}


def model_width(wildcards):
    return config["models"][wildcards.model]["width"]


def finetune_inputs(wildcards):
    inputs = data_files(wildcards.dataset)
    epoch, rep = int(wildcards.epoch), wildcards.rep
    if epoch == 0:  # every replicate starts from the same source weights
        inputs["weights"] = paths.WEIGHTS.format(model=wildcards.model)
    else:
        inputs["previous"] = checkpoint_file(wildcards.model, wildcards.dataset, epoch - 1, rep)
    training = training_params(wildcards)
    # epoch 1 (and the first after LP-FT's probe phase) starts a fresh optimizer: no state read
    if epoch >= 1 and not fresh_optimizer(training, epoch):
        inputs["previous_state"] = resume_file(wildcards.model, wildcards.dataset, epoch - 1, rep)
    if reads_reference(training, epoch):  # lr_from: the reference run's score file (featdyn.spec.recipes)
        ref = training["lr_from"]
        inputs["reference"] = paths.SCORES.format(metric=ref["metric"], model=ref["model"], dataset=wildcards.dataset)
    return inputs


FILTER_METRICS = [m for m in METRICS if fdconfig.metric_params(config, m)["granularity"] == "filter"]


def filter_table(metric, model, dataset, epoch, rep=""):
    return paths.FILTER_TABLE.format(metric=metric, model=model, dataset=dataset, rep=rep, epoch=epoch)


def source_stats_file(model, dataset, rep=""):
    return paths.SOURCE_STATS.format(model=model, dataset=dataset, rep=rep)


def replicate_stats_file(model, dataset, a, b, epoch):
    """Statistics of replicates a and b at one epoch (the noise floor)."""
    return paths.REPLICATE_STATS.format(model=model, dataset=dataset, a=a, b=b, epoch=epoch)


def replicate_filter_table(metric, model, dataset, a, b, epoch):
    """Per-filter distances between replicates a and b at one epoch (a filter metric's noise floor)."""
    return paths.REPLICATE_FILTER_TABLE.format(metric=metric, model=model, dataset=dataset, a=a, b=b, epoch=epoch)


def null_file(model, dataset):
    """Statistics of the permutation null (replicate 0's source store against itself, images permuted)."""
    return paths.NULL_STATS.format(model=model, dataset=dataset)


# The permutation null (featdyn.engine.noise): a few seeded permutations of the probe images.
NULL = config["permutation_null"]


def score_inputs(wildcards):
    """Every replicate's statistics (lists ordered replicate by replicate, epoch by epoch), the
    statistics of every replicate pair at every epoch, and the permutation null's (layer metrics)."""
    m, d = wildcards.model, wildcards.dataset
    epochs, reps = analysed_epochs(m, d), reps_of(m, d)
    if wildcards.metric in FILTER_METRICS:
        return {
            "epochs": [filter_table(wildcards.metric, m, d, e, r) for r in reps for e in epochs],
            "groups": [filter_groups(wildcards.metric, m, d, e, r) for r in reps for e in epochs],
            "pairs": [
                replicate_filter_table(wildcards.metric, m, d, a, b, e)
                for a, b in replicate_pairs(len(reps))
                for e in epochs
            ],
        }
    inputs = {
        "source": [source_stats_file(m, d, r) for r in reps],
        "epochs": [epoch_stats(m, d, e, r) for r in reps for e in epochs],
        "source_groups": [stats_groups(m, d, "source", r) for r in reps],
        "groups": [stats_groups(m, d, f"epoch_{e}", r) for r in reps for e in epochs],
        "pairs": [replicate_stats_file(m, d, a, b, e) for a, b in replicate_pairs(len(reps)) for e in epochs],
    }
    if NULL["permutations"]:
        inputs["null"] = null_file(m, d)
    return inputs


ALL_SCORES = [paths.SCORES.format(metric=s, model=m, dataset=d) for s in METRICS for m, d in RUNS]

# Bootstrap over the probe images (featdyn.engine.bootstrap): the statistics jobs keep per-image-group
# statistics (their only parameter is the number of groups, 0 when intervals are off), and the
# score jobs resample them, so the resamples, level and seed rerun only score jobs.
try:
    BOOTSTRAP = BootstrapSpec.from_config(config["bootstrap"])
except (FeatdynError, TypeError) as exc:
    raise WorkflowError(f"bootstrap: {exc}") from None


def epoch_stats(model, dataset, epoch, rep=""):
    return paths.EPOCH_STATS.format(model=model, dataset=dataset, rep=rep, epoch=epoch)


def stats_groups(model, dataset, name, rep=""):
    return paths.STATS_GROUPS.format(model=model, dataset=dataset, rep=rep, name=name)


def filter_groups(metric, model, dataset, epoch, rep=""):
    return paths.FILTER_GROUPS.format(metric=metric, model=model, dataset=dataset, rep=rep, epoch=epoch)


def replicates_file(metric, model, dataset):
    return paths.BOOTSTRAP_REPLICATES.format(metric=metric, model=model, dataset=dataset)


REPLICATE_KEYS = [[s, m, d] for s in METRICS for m, d in RUNS]
ALL_REPLICATES = [replicates_file(s, m, d) for s, m, d in REPLICATE_KEYS]

# Reading (b) of the correlation (across filters) needs the per-filter tables of two filter metrics.
FILTER_TABLES = (
    [filter_table(s, m, d, e) for s in FILTER_METRICS for m, d in RUNS for e in analysed_epochs(m, d)]
    if len(FILTER_METRICS) >= 2
    else []
)


# Intermediates that a complete run keeps, by the rule that writes them. When the tables exist,
# Snakemake considers them up to date even if one of these was deleted (a failed job's output
# is removed), and may report "Nothing to be done": say so at start-up, with the command.
def kept_intermediates():
    files = {}
    for m, d, r in RUN_REPS:
        for e in range(final_epoch(m, d) + 1):
            files[paths.EPOCH_METRICS.format(model=m, dataset=d, rep=r, epoch=e)] = "finetune_epoch"
        for e in analysed_epochs(m, d):
            if config["retention"]["activations"] == "keep":  # dropped ones are meant to go
                files[store_dir(m, d, e, r)] = "extract"
            for s in FILTER_METRICS:
                files[filter_table(s, m, d, e, r)] = "filter_scores"
                files[filter_groups(s, m, d, e, r)] = "filter_scores"
            if len(FILTER_METRICS) < len(METRICS):
                files[epoch_stats(m, d, e, r)] = "layer_stats"
                files[stats_groups(m, d, f"epoch_{e}", r)] = "layer_stats"
    return files


def warn_missing_intermediates():
    if not workflow.is_main_process or not os.path.exists(paths.TABLE.format(name="table2_reusability", ext="csv")):
        return
    missing = {path: rule for path, rule in kept_intermediates().items() if not os.path.exists(path)}
    if missing:
        rules = " ".join(dict.fromkeys(missing.values()))
        logger.warning(
            f"featdyn: the tables exist but {len(missing)} intermediate file(s) of a complete run are missing "
            f"(e.g. {next(iter(missing))}). Snakemake reruns only what a target needs, so it may report "
            f"'Nothing to be done'. Recompute them by naming them as targets (snakemake {next(iter(missing))} "
            f"...), then run snakemake again; or rerun every job of their rules and what follows: "
            f"snakemake --forcerun {rules} (README: 'When something goes wrong')."
        )


warn_missing_intermediates()

# The qualitative figures (the visualize block): which epochs are columns, what ranks the filters.
VISUALIZE = fdconfig.visualize_block(config)
RANK_METRIC = fdconfig.rank_metric(config)


def visual_epochs(model, dataset):
    return fdconfig.visual_epochs(config, model, dataset)


def units_table(model, dataset):
    return paths.UNITS.format(model=model, dataset=dataset)


def visualize_inputs(wildcards):
    """The prepared dataset, the stores of the grid's epochs and what ranks the filters: the rank
    metric's per-filter tables of epoch 0 and the last epoch, or else the last epoch's store."""
    m, d = wildcards.model, wildcards.dataset
    last = analysed_epochs(m, d)[-1]
    inputs = data_files(d) | {"stores": [store_dir(m, d, e) for e in visual_epochs(m, d)]}
    if RANK_METRIC:
        inputs["tables"] = [filter_table(RANK_METRIC, m, d, 0), filter_table(RANK_METRIC, m, d, last)]
    else:
        inputs["last"] = store_dir(m, d, last)
    return inputs


VISUAL_FIGURES = [
    paths.VISUAL_FIGURE.format(kind=kind, model=m, dataset=d, ext=ext)
    for kind in ("patches", "heatmaps")
    for m, d in RUNS
    for ext in ("png", "pdf")
]

# Fine-tuning recipes side by side (workflow/rules/recipes.smk): entries of one architecture with
# different training blocks; the recipe table and figure exist only where there are such groups.
from featdyn.spec.recipe_names import recipe_groups, recipe_label

RECIPE_GROUPS = recipe_groups(config["models"])
RECIPE_MODELS = [m for group in RECIPE_GROUPS.values() for m in group]
RECIPE_LABELS = {m: {d: recipe_label(training_config(config, m, d)) for d in DATASETS} for m in RECIPE_MODELS}
RECIPE_KEYS = [[s, m, d] for s in METRICS for m in RECIPE_MODELS for d in DATASETS]
RECIPE_OUTPUTS = (
    [paths.TABLE.format(name="recipes", ext="csv"), paths.RECIPE_FIGURE.format(ext="png")] if RECIPE_GROUPS else []
)
