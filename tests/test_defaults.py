"""One home for every default: the config schema. The workflow fills it in once when it loads a
config (workflow/Snakefile); the declarations that remain elsewhere (the library's dataclasses for
callers without a config, the metric kinds' parameters, config/README.md) must agree with it."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from featdyn.engine.bootstrap import BootstrapSpec
from featdyn.spec.config import with_defaults
from featdyn.spec.hyperparams import TrainConfig
from featdyn.spec.metric_kinds import KIND_PARAMS
from featdyn.spec.schema import fill_defaults, load_schema, schema_path

from conftest import REPO

SCHEMA = load_schema(schema_path(REPO))


def schema_defaults(block: str) -> dict:
    return {k: v["default"] for k, v in SCHEMA["properties"][block]["properties"].items() if "default" in v}


def test_the_training_dataclass_agrees_with_the_schema():
    declared = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name not in ("seed", "extra")}
    declared = {k: list(v) if isinstance(v, tuple) else v for k, v in declared.items()}
    assert schema_defaults("training") == declared
    assert SCHEMA["properties"]["seed"]["default"] == TrainConfig.seed
    # override blocks hold only what they change: no defaults there
    assert not any("default" in v for v in SCHEMA["$defs"]["training"]["properties"].values())


def test_the_bootstrap_dataclass_agrees_with_the_schema():
    assert schema_defaults("bootstrap") == dataclasses.asdict(BootstrapSpec())


def test_metric_parameters_have_their_defaults_in_the_metric_kinds_only():
    """A parameter belongs to some kinds only (alpha: pwsm), so its default is the kind's
    (featdyn.spec.metric_kinds), never the schema's: a schema default would give every metric an
    alpha, which the other kinds refuse."""
    metric = SCHEMA["properties"]["metrics"]["additionalProperties"]["properties"]
    params = {p for kind in KIND_PARAMS.values() for p in kind}
    assert params and not any("default" in metric[p] for p in params)


def test_filling_is_idempotent_and_leaves_given_values():
    config = {"models": {"m": {"arch": "resnet50", "width": 0.5, "training": {"lr": 0.5}}},
              "datasets": {"d": {"path": "x"}}, "metrics": {"p": {"kind": "pwsm"}},
              "training": {"epochs": 9}, "visualize": {"patches": {"filters": 5}}}
    once = with_defaults(config)
    assert once == fill_defaults(yaml.safe_load(yaml.safe_dump(once)), SCHEMA)
    assert once["models"]["m"]["width"] == 0.5 and once["models"]["m"]["weights"] == "IMAGENET1K_V1"
    assert once["models"]["m"]["training"] == {"lr": 0.5}, "an override block gets no defaults"
    assert once["training"]["epochs"] == 9 and once["training"]["lr"] == 1e-4
    assert once["visualize"]["patches"] == {"filters": 5, "layers": [-2, -1], "classes": 2}
    assert once["metrics"]["p"] == {"kind": "pwsm", "granularity": "layer", "tokens": "patches"}
    assert "training" not in config["models"]["m"] or config["models"]["m"]["training"] == {"lr": 0.5}
    assert "weights" not in config["models"]["m"], "the caller's config is not changed"


def readme_defaults() -> dict[str, str]:
    """{key: default} of the one-key rows of config/README.md's table whose default is a literal."""
    rows = {}
    for key, value in re.findall(r"^\| `([\w.<>]+)` \| `([^`|]+)` \|", (REPO / "config/README.md").read_text(), re.M):
        rows[key.replace("<name>.", "*.")] = value
    return rows


def lookup(key: str):
    node = SCHEMA
    for part in key.split("."):
        props = node.get("properties") or {}
        if part == "*":
            node = node["additionalProperties"]
        elif part in props:
            node = props[part]
        else:
            return KeyError
    return node.get("default", KeyError)


@pytest.mark.parametrize("key, text", sorted(readme_defaults().items()))
def test_config_readme_states_the_schema_defaults(key, text):
    default = lookup(key)
    if key.startswith("metrics.*.") and key.split(".")[-1] in KIND_PARAMS["pwsm"]:
        default = KIND_PARAMS["pwsm"][key.split(".")[-1]]
    if default is KeyError:
        pytest.skip(f"{key}: derived from another key or an empty override, not a schema default")
    stated = yaml.safe_load(text)
    if isinstance(stated, str) and isinstance(default, float):
        stated = float(stated)  # YAML 1.1 reads 1e-4 as a string
    assert stated == default or str(default) == text, f"config/README.md says {key}: {text}, the schema {default!r}"


def test_no_code_keeps_a_fallback_for_a_config_default():
    """The rules, the scripts and the config's readers use the filled config: a `.get(key, value)`
    on a key the schema fills would be a second home for its default (and could drift)."""
    keys = set()

    def collect(node):
        for key, sub in (node.get("properties") or {}).items():
            if "default" in sub:
                keys.add(key)
            collect(sub)
        if isinstance(node.get("additionalProperties"), dict):
            collect(node["additionalProperties"])

    collect(SCHEMA)
    files = [REPO / "workflow/Snakefile", *(REPO / "workflow/rules").glob("*.smk"),
             *(REPO / "workflow/scripts").glob("*.py"), REPO / "src/featdyn/spec/config.py",
             REPO / "src/featdyn/nets/disk.py", REPO / "tools/plan.py"]
    alternatives = "|".join(sorted(keys))
    pattern = re.compile(r"""\.get\(\s*["'](""" + alternatives + r""")["']\s*,""")
    for path in files:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            assert not pattern.search(line), f"{path.relative_to(REPO)}:{n}: a fallback for a schema default: {line}"
