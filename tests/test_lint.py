"""Workflow hygiene, run by `make test`: Snakemake's linter finds nothing, snakefmt would change
nothing, and every rule with a script tracks its code (params.code)."""

from __future__ import annotations

import re
import subprocess

import pytest

from conftest import REPO, SNAKEFILE, VENV_BIN


@pytest.mark.workflow
def test_snakemake_lint_is_clean():
    proc = subprocess.run([str(VENV_BIN / "snakemake"), "--lint", "--snakefile", str(SNAKEFILE),
                           "--directory", str(REPO)], capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in out, out[-4000:]


def test_snakefmt_would_change_nothing():
    proc = subprocess.run([str(VENV_BIN / "snakefmt"), "--check", "."], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:] + "\n(run `.venv/bin/snakefmt .`)"


def rules():
    """(file, rule name, rule text) of every rule in workflow/rules/*.smk and the Snakefile."""
    for smk in [SNAKEFILE, *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
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


def test_project_files_point_only_inside_the_repository():
    """The design notes the code and READMEs cite are docs/*.md of this repository; no file names a
    document or folder outside it."""
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    outside = ["DESIGN" + ".md", "/" + "work/", "shared" + "/paper"]
    for name in listed.stdout.split():
        path = REPO / name
        if not path.is_file() or path.suffix not in {".py", ".md", ".smk", ".yaml", ".sh", ".rst", ".toml", ""}:
            continue
        text = path.read_text(errors="replace")
        for needle in outside:
            assert needle not in text, f"{name} points outside the repository ({needle})"
        for doc in re.findall(r"docs/[\w.-]+\.md", text):
            assert (REPO / doc).is_file(), f"{name} cites {doc}, which does not exist"


def test_ruff_finds_nothing():
    """The Python code (library, scripts, tests, tools, benchmarks) passes the rules chosen in
    pyproject.toml: pyflakes, pycodestyle, import order, bugbear, pyupgrade."""
    proc = subprocess.run([str(VENV_BIN / "ruff"), "check", "."], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:] + "\n(run `.venv/bin/ruff check --fix .`)"
