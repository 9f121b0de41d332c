"""The catalog's conventions and the project's metadata: workflow/Snakefile with its default
profile, the .test case that CI runs, one version everywhere, a license and a citation."""

from __future__ import annotations

import re
import subprocess
import tomllib

import numpy as np
import pytest
import yaml
from PIL import Image

import featdyn

from conftest import REPO, TEST_CASE, VENV_BIN, job_counts, make_tree


def test_the_catalog_layout_is_in_place():
    for path in ("workflow/Snakefile", "workflow/profiles/default/config.yaml", "workflow/schemas/config.schema.yaml",
                 "config/config.yaml", "config/README.md", ".test/config/config.yaml", "LICENSE", "CITATION.cff",
                 "CHANGELOG.md", ".snakemake-workflow-catalog.yml"):
        assert (REPO / path).is_file(), path
    assert not (REPO / "Snakefile").exists(), "one Snakefile: workflow/Snakefile"
    catalog = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())
    assert catalog["usage"]["software-stack-deployment"]["conda"] is True


def test_one_version_everywhere():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    latest = re.search(r"^## (\d+\.\d+\.\d+)", (REPO / "CHANGELOG.md").read_text(), re.M).group(1)
    assert project == featdyn.__version__ == str(citation["version"]) == latest
    assert citation["preferred-citation"]["title"] == "An Empirical Study of Feature Dynamics During Fine-tuning"


def test_the_test_case_images_are_the_generated_ones():
    """.test/data is what tests/conftest.py's make_tree draws (seeded): regenerate it with make_tree
    if the generator changes."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        fresh = make_tree(Path(tmp) / "colours", classes=2, per_class=12, size=20)
        committed = TEST_CASE / "data" / "colours"
        names = sorted(p.relative_to(committed) for p in committed.rglob("*.png"))
        assert names == sorted(p.relative_to(fresh) for p in fresh.rglob("*.png")) and len(names) == 24
        for name in names:
            assert np.array_equal(np.asarray(Image.open(committed / name)), np.asarray(Image.open(fresh / name)))


@pytest.mark.workflow
def test_the_test_case_runs_from_the_repository_root():
    """`snakemake --directory .test` finds workflow/Snakefile, its default profile and the test
    case's own config: the whole tiny DAG is planned (the tests' session run executes it)."""
    proc = subprocess.run([str(VENV_BIN / "snakemake"), "--directory", ".test", "-n", "--quiet", "rules"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "workflow/profiles/default" in proc.stdout + proc.stderr
    counts = job_counts(proc.stdout)
    assert counts["finetune_epoch"] == 3 and counts["score"] == 4 and counts["all"] == 1, counts
