"""One home for every path template (featdyn.spec.paths): each file a rule names in its input or
output is one of the templates, with its own wildcards or concrete values in their place."""

from __future__ import annotations

import re

import pytest

from featdyn.spec import paths

from conftest import REPO

RULES = sorted((REPO / "workflow" / "rules").glob("*.smk"))


def pattern(template: str) -> re.Pattern:
    """A template as a regex: a `{name}` part matches a wildcard (`{name}`, `{w.name}`) or a value."""
    parts = re.split(r"(\{\w+\})", template)
    return re.compile("".join(r"(\{[\w.]+\}|[^/{}]+)" if re.fullmatch(r"\{\w+\}", p) else re.escape(p)
                              for p in parts) + "$")


PATTERNS = {name: pattern(t) for name, t in paths.TEMPLATES.items()}


def named_paths() -> list[tuple[str, str]]:
    """(file, path) of every results/ path written out in the rules, logs and benchmarks aside."""
    found = []
    for smk in RULES:
        for path in re.findall(r"""["'](results/[^"']+)["']""", smk.read_text()):
            if not path.startswith(("results/logs/", "results/benchmarks/")):
                found.append((smk.name, path))
    return found


def test_the_rules_name_paths():
    assert len(named_paths()) > 20


@pytest.mark.parametrize("smk, path", named_paths())
def test_every_path_a_rule_names_is_a_template(smk, path):
    matches = [name for name, p in PATTERNS.items() if p.match(path)]
    assert matches, f"{smk}: {path} is not a template of featdyn.spec.paths: add it there, and use it in common.smk"


def test_templates_format_with_their_wildcards():
    assert paths.CHECKPOINT.format(model="m", dataset="d", epoch=3) == "results/checkpoints/m/d/epoch_3.pt"
    assert paths.MANIFEST.format(dataset="d") == "results/data/d/manifest.csv"
    assert len(set(paths.TEMPLATES.values())) == len(paths.TEMPLATES), "two names for one template"
