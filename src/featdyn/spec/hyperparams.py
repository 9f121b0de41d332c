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

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Every field of TrainConfig is in exactly one of these groups (tests/test_hyperparams.py checks).
EPOCH0_KEYS = ("seed", "mean", "std", "bf16", "channels_last")  # epoch 0 onwards
OPTIMISATION_KEYS = ("batch_size", "lr", "optimizer", "momentum", "weight_decay", "grad_clip")  # epochs >= 1
RUN_ONLY_KEYS = ("epochs", "eval_batch_size", "extra")  # no checkpoint depends on these


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
    return out


def training_config(config: dict, model: str, dataset: str) -> dict:
    """The training block for one run: defaults < global ``training`` < model's < dataset's."""
    cfg = asdict(TrainConfig()) | {"seed": config.get("seed", 0)}
    cfg.pop("extra")
    for block in (config.get("training") or {}, config["models"][model].get("training") or {},
                  config["datasets"][dataset].get("training") or {}):
        cfg |= block
    return cfg
