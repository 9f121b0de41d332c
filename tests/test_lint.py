"""Workflow hygiene, run by `make test`: Snakemake's linter finds nothing, snakefmt would change
nothing, and every rule with a script tracks its code (params.code)."""

from __future__ import annotations

import re
import subprocess

import pytest

from conftest import REPO, VENV_BIN


@pytest.mark.workflow
def test_snakemake_lint_is_clean():
    proc = subprocess.run([str(VENV_BIN / "snakemake"), "--lint", "--snakefile", str(REPO / "Snakefile"),
                           "--directory", str(REPO)], capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in out, out[-4000:]


def test_snakefmt_would_change_nothing():
    proc = subprocess.run([str(VENV_BIN / "snakefmt"), "--check", "."], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:] + "\n(run `.venv/bin/snakefmt .`)"


def rules():
    """(file, rule name, rule text) of every rule in workflow/rules/*.smk and the Snakefile."""
    for smk in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        for block in re.split(r"\n(?=rule |localrule )", smk.read_text())[1:]:
            yield smk.name, block.split()[1].rstrip(":"), block


def test_every_script_rule_tracks_its_code():
    """A rule's params.code is the digest of its own script (and the library it imports): that is
    what reruns the rule when its code changes (profiles/default sets the rerun triggers)."""
    for name, rule, text in rules():
        script = re.search(r'\n    script:\n        "\.\./scripts/([\w.]+)"', text)
        if script:
            assert f'code=script_code("{script.group(1)}")' in text, \
                f"{name}: rule {rule} needs `code=script_code(\"{script.group(1)}\")` in its params"
