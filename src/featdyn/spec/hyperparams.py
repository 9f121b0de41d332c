"""The fine-tuning hyperparameters, and which of them change which epoch's result.

Torch-free on purpose: the workflow resolves these at every parse, including the re-parse that
each cluster job does before its own work, and importing torch there costs seconds per job.

An epoch job's checkpoint and metrics depend on a subset of the block only. Epoch 0 is the source
model with its new head: it depends on the seed (the head's initialisation) and on how it is
evaluated, not on the learning rate. Epochs >= 1 also depend on the optimisation settings. The
number of epochs and the evaluation batch size change no checkpoint: raising ``epochs`` adds
epochs without retraining the earlier ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from featdyn.spec.replicates import replicate_seed

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Every field of TrainConfig is in exactly one of these groups (tests/test_hyperparams.py checks).
EPOCH0_KEYS = ("seed", "mean", "std", "bf16", "channels_last")  # epoch 0 onwards
OPTIMISATION_KEYS = ("batch_size", "lr", "optimizer", "momentum", "weight_decay", "grad_clip")  # epochs >= 1
RUN_ONLY_KEYS = ("epochs", "eval_batch_size", "extra")  # no checkpoint depends on these
# Fine-tuning recipes (featdyn.nets.recipes): epochs >= 1, and only where they are set, so that a
# block without them gives the same params and checkpoints as before they existed.
RECIPE_KEYS = ("freeze", "freeze_bn", "probe_epochs", "layer_lr", "lr_from")
RECIPE_DEFAULTS = {"freeze": None, "freeze_bn": True, "probe_epochs": 0, "layer_lr": None, "lr_from": None}
# lr_from's parameters and their defaults (docs/design.md, "Recipes"): the reference's last epoch,
# multipliers proportional to the distances (power 1), never below 1% of the base lr.
LR_FROM_DEFAULTS = {"metric": None, "epoch": "last", "power": 1.0, "floor": 0.01}


@dataclass
class TrainConfig:
    """Hyperparameters of one fine-tuning run (the ``training`` block of the config)."""

    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-4
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    grad_clip: float | None = 0.5
    eval_batch_size: int = 128
    bf16: bool | str = "auto"
    channels_last: bool | str = "auto"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    seed: int = 0
    freeze: list[str] | str | None = None
    freeze_bn: bool = True
    probe_epochs: int = 0
    layer_lr: dict | None = None
    lr_from: dict | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "extra"}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known, extra={k: v for k, v in d.items() if k not in cls.__dataclass_fields__})


def epoch_params(training: dict, epoch: int) -> dict:
    """The part of a resolved training block that epoch ``epoch``'s checkpoint depends on.

    Momentum counts only for SGD (Adam ignores it). Lists stay lists (they are compared as
    recorded parameters).
    """
    keys = EPOCH0_KEYS + (OPTIMISATION_KEYS if epoch >= 1 else ())
    out = {k: list(training[k]) if isinstance(training[k], tuple) else training[k] for k in keys}
    if epoch >= 1 and out["optimizer"] != "sgd":
        out.pop("momentum")
    if epoch >= 1:
        out |= recipe_params(training, epoch)
    return out


def is_recipe(training: dict) -> bool:
    """Whether a training block sets any recipe option (otherwise: every layer, one learning rate)."""
    return any(training.get(k, v) != v for k, v in RECIPE_DEFAULTS.items() if k != "freeze_bn")


def probing(training: dict, epoch: int) -> bool:
    """Whether epoch ``epoch`` (>= 1) is in the linear-probe phase of LP-FT (the head alone trains)."""
    return 1 <= epoch <= (training.get("probe_epochs") or 0)


def recipe_params(training: dict, epoch: int) -> dict:
    """The recipe options epoch ``epoch`` (>= 1) depends on; empty for full fine-tuning.

    In the probe phase of LP-FT (epochs 1..m) only the head trains, at the base lr: those epochs
    depend on the phase and on ``freeze_bn``, not on m, ``freeze``, ``layer_lr`` or ``lr_from``, so
    raising m or editing the later phase keeps them. After it, every option that is set counts.
    """
    if not is_recipe(training):
        return {}
    bn = {"freeze_bn": bool(training.get("freeze_bn", True))}
    if probing(training, epoch):
        return {"probe": True} | bn
    out = {k: training[k] for k in ("probe_epochs", "freeze", "layer_lr") if training.get(k) not in (None, 0)}
    if isinstance(out.get("freeze"), tuple):
        out["freeze"] = list(out["freeze"])
    if training.get("lr_from"):
        out["lr_from"] = lr_from_block(training["lr_from"])
    if out.get("freeze"):
        out |= bn
    return out


def lr_from_block(block: dict) -> dict:
    """An ``lr_from`` block with its defaults filled in (the metric is resolved by the config)."""
    return {"model": block["model"]} | {k: block.get(k, v) for k, v in LR_FROM_DEFAULTS.items()}


def fresh_optimizer(training: dict, epoch: int) -> bool:
    """Whether epoch ``epoch`` (>= 1) starts a fresh optimizer: epoch 1, and the first epoch after
    LP-FT's probe phase. It then needs the previous epoch's weights only, not its resume state."""
    m = training.get("probe_epochs") or 0
    return epoch == 1 or (m > 0 and epoch == m + 1)


def training_config(config: dict, model: str, dataset: str, replicate: int = 0) -> dict:
    """The training block for one run: defaults < global ``training`` < model's < dataset's; for
    a training replicate r >= 1 the seed is derived from (seed, r) (featdyn.spec.replicates)."""
    cfg = asdict(TrainConfig()) | {"seed": config.get("seed", 0)}
    cfg.pop("extra")
    for block in (config.get("training") or {}, config["models"][model].get("training") or {},
                  config["datasets"][dataset].get("training") or {}):
        cfg |= block
    if replicate:
        cfg["seed"] = replicate_seed(cfg["seed"], replicate)
    if cfg.get("lr_from"):
        cfg["lr_from"] = lr_from_block(cfg["lr_from"])
        if cfg["lr_from"]["metric"] is None:
            cfg["lr_from"]["metric"] = default_lr_from_metric(config)
    return cfg


def default_lr_from_metric(config: dict) -> str | None:
    """lr_from's default metric: the first layer-granularity metric of the config (else the first)."""
    metrics = list(config.get("metrics") or {})
    layer = [m for m in metrics if (config["metrics"][m] or {}).get("granularity", "layer") == "layer"]
    return (layer or metrics or [None])[0]
