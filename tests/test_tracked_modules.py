"""Each rule tracks exactly the library modules its script needs (issue: precise rerun tracking).

A rule's ``params.code`` is a digest of its script and of every featdyn module the script imports,
directly or through other modules (featdyn.spec.fingerprints): editing any of them reruns the rule's
jobs. An import added for convenience (a constant, a small helper) silently widens what reruns, and
on the statistics rules that costs a pass over every activation store. This file pins the tracked
modules of every script: a change here is a decision, made in review, about what reruns what.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from featdyn.spec.fingerprints import code_files

from conftest import REPO

SCRIPTS = REPO / "workflow" / "scripts"
PACKAGE = REPO / "src" / "featdyn"

# {script: featdyn modules it runs (package __init__ files aside)}
TRACKED = {
    "download_dataset": {"atomic", "data.download", "progress"},
    "extract": {
        "atomic", "data.datasets", "data.download", "data.prefetch", "data.stores", "engine.linalg", "finite",
        "nets.batches", "nets.checkpoints", "nets.extraction", "nets.layers", "nets.layouts", "nets.models",
        "progress", "spec.fingerprints", "spec.hyperparams", "spec.layouts", "spec.replicates"},
    "fetch_weights": {"atomic", "data.download", "nets.models", "progress"},
    "filter_scores": {
        "atomic", "data.download", "data.stores", "engine.bootstrap", "engine.filterwise", "engine.linalg",
        "engine.metrics", "engine.readings", "engine.similarity", "engine.stats", "finite", "progress", "spec.columns",
        "spec.layouts", "spec.metric_kinds"},
    "findings": {
        "atomic", "engine.bootstrap", "engine.filterwise", "engine.linalg", "engine.metrics", "engine.stats",
        "finite", "progress", "report.findings", "report.recipes", "report.replicas", "report.tables",
        "spec.metric_kinds", "spec.recipe_names"},
    "finetune_epoch": {
        "atomic", "data.datasets", "data.download", "data.prefetch", "engine.linalg", "finite",
        "nets.batches", "nets.checkpoints", "nets.models", "nets.recipes", "nets.training", "progress",
        "spec.fingerprints", "spec.hyperparams", "spec.replicates"},
    "layer_stats": {
        "atomic", "data.download", "data.stores", "engine.bootstrap", "engine.filterwise", "engine.linalg",
        "engine.metrics", "engine.readings", "engine.similarity", "engine.stats", "finite", "progress", "spec.columns",
        "spec.layouts", "spec.metric_kinds"},
    "materialise_demo": {"atomic", "data.demo_data", "progress"},
    "metric_correlation": {
        "atomic", "engine.bootstrap", "engine.filterwise", "engine.linalg", "engine.metrics", "engine.stats",
        "finite", "progress", "report.correlation", "report.replicas", "report.tables", "spec.metric_kinds"},
    "null_stats": {
        "atomic", "data.download", "data.stores", "engine.linalg", "engine.noise", "engine.readings", "engine.stats",
        "finite", "progress", "spec.layouts"},
    "prepare_dataset": {"atomic", "data.datasets", "data.prefetch", "progress", "spec.fingerprints"},
    "recipes": {
        "atomic", "engine.bootstrap", "engine.filterwise", "engine.linalg", "engine.metrics", "engine.stats",
        "finite", "progress", "report.figures", "report.findings", "report.recipe_figure", "report.recipes",
        "report.replicas", "report.tables", "spec.metric_kinds", "spec.recipe_names"},
    "replicate_filter_scores": {
        "atomic", "data.download", "data.stores", "engine.bootstrap", "engine.filterwise", "engine.linalg",
        "engine.metrics", "engine.readings", "engine.similarity", "engine.stats", "finite", "progress", "spec.columns",
        "spec.layouts", "spec.metric_kinds"},
    "replicate_stats": {
        "atomic", "data.download", "data.stores", "engine.linalg", "engine.noise", "engine.readings", "engine.stats",
        "finite", "progress", "spec.layouts"},
    "score": {
        "atomic", "data.download", "data.stores", "engine.bootstrap", "engine.filterwise", "engine.floor",
        "engine.linalg", "engine.metrics", "engine.noise", "engine.readings", "engine.similarity", "engine.stats", "finite",
        "progress", "spec.columns", "spec.layouts", "spec.metric_kinds", "spec.replicates"},
    "similarity_curves": {"atomic", "progress", "report.figures", "report.replicas"},
    "source_stats": {
        "atomic", "data.download", "data.stores", "engine.bootstrap", "engine.filterwise", "engine.linalg",
        "engine.metrics", "engine.readings", "engine.similarity", "engine.stats", "finite", "progress", "spec.columns",
        "spec.layouts", "spec.metric_kinds"},
    "table1": {
        "atomic", "engine.bootstrap", "engine.filterwise", "engine.linalg", "engine.metrics", "engine.stats",
        "finite", "progress", "report.tables", "spec.metric_kinds"},
    "table2": {
        "atomic", "engine.bootstrap", "engine.filterwise", "engine.linalg", "engine.metrics", "engine.stats",
        "finite", "progress", "report.replicas", "report.tables", "spec.metric_kinds"},
    "visualize": {
        "atomic", "data.datasets", "data.download", "data.prefetch", "data.stores", "engine.bootstrap",
        "engine.filterwise", "engine.linalg", "engine.metrics", "engine.readings", "engine.similarity", "engine.stats", "finite",
        "nets.layers", "nets.layouts", "nets.models", "nets.receptive_field", "nets.unit_fields", "progress",
        "report.figures", "report.heatmaps", "report.patches", "report.units", "report.visualize",
        "spec.columns", "spec.fingerprints", "spec.layouts", "spec.metric_kinds"},
}


def tracked(script: str) -> set[str]:
    files = code_files(SCRIPTS / f"{script}.py", PACKAGE)
    return {n.removeprefix("featdyn.") for n, f in files.items()
            if n.startswith("featdyn.") and Path(f).name != "__init__.py"}


def layer(module: str) -> str:
    return module.split(".")[0]


def test_every_script_is_pinned_and_every_pin_is_a_script():
    assert sorted(TRACKED) == sorted(p.stem for p in SCRIPTS.glob("*.py"))


@pytest.mark.parametrize("script", sorted(TRACKED))
def test_a_script_tracks_exactly_its_pinned_modules(script):
    got = tracked(script)
    assert got == TRACKED[script], (
        f"workflow/scripts/{script}.py now tracks {sorted(got - TRACKED[script])} more and "
        f"{sorted(TRACKED[script] - got)} fewer modules: every edit of a tracked module reruns its jobs. "
        "Import from the module that defines a name, keep shared constants in leaf modules, and update "
        "TRACKED only if the script really runs that code.")


STATISTICS = ("source_stats", "layer_stats", "filter_scores", "score", "replicate_stats", "replicate_filter_scores",
              "null_stats")
TRAINING = ("finetune_epoch", "extract")
REPORTING = ("table1", "table2", "metric_correlation", "findings", "similarity_curves")


@pytest.mark.parametrize("script", STATISTICS)
def test_statistics_never_track_reporting_or_models(script):
    """A change to how a table or a figure is made never reruns a pass over the activation stores,
    and the statistics never build a model."""
    assert not {m for m in tracked(script) if layer(m) in ("report", "nets")}


@pytest.mark.parametrize("script", TRAINING)
def test_training_and_extraction_track_no_metrics_or_reporting(script):
    got = tracked(script)
    assert not {m for m in got if layer(m) == "report"}
    assert not {m for m in got if layer(m) == "engine"} - {"engine.linalg"}  # pick_device only


@pytest.mark.parametrize("script", REPORTING)
def test_reporting_reads_no_stores_and_builds_no_model(script):
    assert not {m for m in tracked(script) if layer(m) == "nets" or m == "data.stores"}


def test_no_script_tracks_the_parse_time_config_check():
    """The config is resolved and checked when the workflow is parsed; a job reads the result from
    its params. Editing the check (or the schema's loader) reruns nothing."""
    for script in TRACKED:
        assert not {"spec.config", "spec.schema"} & tracked(script), script


def test_the_library_has_no_re_export_shims():
    """Every name is imported from the module that defines it: a module that re-exports another's
    names (a `noqa: F401` import) makes its importers track both."""
    for path in PACKAGE.rglob("*.py"):
        assert not re.search(r"noqa: F401", path.read_text()), f"{path.relative_to(REPO)} re-exports names"
