"""The findings check on constructed score tables: each observation where it holds, where it does
not, and where the run cannot check it; the overall verdicts; the Markdown and reST renderings."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from featdyn.engine.bootstrap import Replicates
from featdyn.report.correlation import COLUMNS
from featdyn.report.findings import (
    FAILS,
    HOLDS,
    UNCHECKED,
    RunNumbers,
    check_agreement,
    check_architecture,
    check_datasets,
    check_depth,
    check_epochs,
    findings,
    overall,
    paper_name,
    to_markdown,
    to_rst,
)
from featdyn.report.tables import table2


def run(value, models=("m",), datasets=("d",), metrics=("procrustes",), layers=3, epochs=3, spread=0.002,
        resamples=200, archs=None, correlation=None, seed=0) -> RunNumbers:
    """Scores value(model, dataset, metric, layer, epoch) for epochs 0..T (epoch 0: 0), and
    replicates = value + independent noise of sd ``spread`` (no replicates when resamples = 0)."""
    rng = np.random.default_rng(seed)
    rows, reps = [], {}
    for model, dataset, metric in itertools.product(models, datasets, metrics):
        grid = np.array([[0.0 if e == 0 else value(model, dataset, metric, li, e) for e in range(epochs + 1)]
                         for li in range(layers)])
        for li, e in np.ndindex(*grid.shape):
            rows.append(dict(model=model, dataset=dataset, metric=metric, kind=metric.split("_")[0],
                             granularity="layer", layer=f"l{li}", layer_index=li, epoch=e, value=grid[li, e]))
        noise = spread * rng.standard_normal((resamples, *grid.shape))
        noise[:, :, 0] = 0.0
        reps[(metric, model, dataset)] = Replicates(grid[None] + noise, [f"l{i}" for i in range(layers)],
                                                    list(range(epochs + 1)), 0.95)
    scores = pd.DataFrame(rows)
    return RunNumbers(scores=scores, replicates=reps, table2=table2(scores, reps),
                      correlation=correlation if correlation is not None else pd.DataFrame(columns=COLUMNS),
                      models=archs or {m: "mobilenet_v2" for m in models}, datasets=list(datasets),
                      metrics=list(metrics))


def verdicts(finding) -> list[str]:
    return [c.verdict for c in finding.cases]


def test_overall_verdict_rule():
    assert overall([HOLDS, HOLDS, UNCHECKED]) == HOLDS
    assert overall([HOLDS, FAILS]) == FAILS
    assert overall([UNCHECKED]) == overall([]) == UNCHECKED


def test_depth():
    deeper = run(lambda m, d, s, li, e: 0.1 + 0.2 * li + 0.01 * e)
    f = check_depth(deeper)
    assert verdicts(f) == [HOLDS] and f.verdict == HOLDS and "beyond its interval" in f.cases[0].evidence
    assert "rho(depth, distance) 1.000" in f.cases[0].evidence
    assert check_depth(run(lambda m, d, s, li, e: 0.5 - 0.2 * li)).verdict == FAILS
    noisy = check_depth(run(lambda m, d, s, li, e: 0.1 + 0.001 * li, spread=0.05))
    assert noisy.verdict == FAILS and "within its interval" in noisy.cases[0].evidence
    assert check_depth(run(lambda m, d, s, li, e: 0.1, layers=1)).verdict == UNCHECKED
    # without intervals the sign decides, and the text says there is none
    off = check_depth(run(lambda m, d, s, li, e: 0.1 + 0.001 * li, resamples=0))
    assert off.verdict == HOLDS and "no interval" in off.cases[0].evidence


def test_epochs():
    assert check_epochs(run(lambda m, d, s, li, e: 0.1 * e + 0.01 * li)).verdict == HOLDS
    assert check_epochs(run(lambda m, d, s, li, e: 0.5 - 0.1 * e)).verdict == FAILS
    flat = check_epochs(run(lambda m, d, s, li, e: 0.3 + 0.0001 * e, spread=0.05))
    assert flat.verdict == FAILS and "within its interval" in flat.cases[0].evidence
    one = check_epochs(run(lambda m, d, s, li, e: 0.3, epochs=1))
    assert one.verdict == UNCHECKED and "1 trained epoch" in one.cases[0].evidence


PAPER = {"awa2": 0.35, "15-scene": 0.45, "fruits360": 0.80}


def test_dataset_ranking_against_the_paper():
    names = [paper_name(d) for d in ("awa2", "15-scene", "fruits360", "textures")]
    assert names == ["AwA2", "15-Scene", "Fruits", None]
    ok = check_datasets(run(lambda m, d, s, li, e: PAPER[d] + 0.01 * li, datasets=list(PAPER)))
    assert ok.verdict == HOLDS and "awa2 0.360 < 15-scene 0.460" in ok.cases[0].evidence
    swapped = {"awa2": 0.9, "15-scene": 0.45, "fruits360": 0.8}
    assert check_datasets(run(lambda m, d, s, li, e: swapped[d], datasets=list(PAPER))).verdict == FAILS
    close = {"awa2": 0.5, "15-scene": 0.45, "fruits360": 0.501}
    assert check_datasets(run(lambda m, d, s, li, e: close[d], datasets=list(PAPER), spread=0.05)).verdict == FAILS


def test_dataset_ranking_on_the_demo_datasets_is_reported_but_not_the_papers():
    demo = {"textures": 0.2, "digits": 0.6}
    f = check_datasets(run(lambda m, d, s, li, e: demo[d], datasets=list(demo)))
    assert f.verdict == UNCHECKED
    assert "textures 0.200 < digits 0.600 (+0.400 [" in f.cases[0].evidence
    assert "beyond its interval" in f.cases[0].evidence
    assert check_datasets(run(lambda m, d, s, li, e: 0.2)).note.startswith("one dataset")


def correlation(r: float, ci: tuple[float, float] = (np.nan, np.nan), a: str = "procrustes", b: str = "pwsm",
                reading: str = "layers_epochs") -> pd.DataFrame:
    return pd.DataFrame([{"reading": reading, "model": "all", "dataset": "all", "metric_a": a, "metric_b": b,
                          "r": r, "r_std": np.nan, "rho": r, "rho_std": np.nan, "r_ci_low": ci[0], "r_ci_high": ci[1],
                          "n": 9, "undefined": int(np.isnan(r))}], columns=COLUMNS)


def test_agreement():
    def agree(corr, metrics=("procrustes", "pwsm")):
        return check_agreement(run(lambda m, d, s, li, e: 0.1 * e, metrics=metrics, correlation=corr))

    assert agree(correlation(0.9, (0.7, 0.97))).verdict == HOLDS
    assert agree(correlation(0.2, (-0.1, 0.5))).verdict == FAILS
    assert agree(correlation(0.6, (-0.1, 0.9))).verdict == FAILS  # r high enough, interval includes 0
    assert agree(correlation(np.nan)).verdict == UNCHECKED
    # no pwsm/procrustes pair: every pair is checked, and the note says so
    other = agree(correlation(0.95, a="cka", b="procrustes"), metrics=("cka", "procrustes"))
    assert other.verdict == HOLDS and "every pair" in other.note
    # a procrustes pair against cka is not the paper's pair when the paper's pair exists
    both = pd.concat([correlation(0.9, (0.8, 0.95)), correlation(0.1, a="cka", b="procrustes")])
    f = agree(both, metrics=("procrustes", "pwsm", "cka"))
    assert [c.subject for c in f.cases] == ["procrustes vs pwsm (layers_epochs)"] and f.verdict == HOLDS


def test_architecture_on_the_farthest_dataset():
    archs = {"vgg": "vgg19", "res": "resnet50"}
    dist = {("vgg", "near"): 0.3, ("res", "near"): 0.35, ("vgg", "far"): 0.9, ("res", "far"): 0.7}

    def f(value, **kw):
        return check_architecture(run(value, models=list(archs), datasets=["near", "far"], archs=archs, **kw))

    ok = f(lambda m, d, s, li, e: dist[(m, d)])
    assert ok.verdict == HOLDS and "closest: res (resnet50)" in ok.cases[0].evidence
    assert f(lambda m, d, s, li, e: dist[(m, d)] if m == "res" else 0.5).verdict == FAILS  # vgg closest on far
    assert f(lambda m, d, s, li, e: {"vgg": 0.70, "res": 0.699}[m] if d == "far" else 0.3,
             spread=0.05).verdict == FAILS  # resnet ahead, within the interval
    single = check_architecture(run(lambda m, d, s, li, e: 0.3))
    assert single.verdict == UNCHECKED and single.note.startswith("one model")
    no_resnet = check_architecture(run(lambda m, d, s, li, e: 0.3 if m == "a" else 0.4, models=["a", "b"],
                                       archs={"a": "vgg19", "b": "densenet121"}))
    assert no_resnet.verdict == UNCHECKED and "closest: a (vgg19)" in no_resnet.cases[0].evidence


def test_renderings_carry_every_finding_and_parse_as_rest():
    docutils = pytest.importorskip("docutils.core")
    found = findings(run(lambda m, d, s, li, e: 0.1 * e + 0.05 * li, models=["mobilenet_v2"],
                         datasets=["textures", "digits"], metrics=["procrustes", "pwsm"],
                         correlation=correlation(0.9, (0.8, 0.95))))
    assert [f.key for f in found] == ["a", "b", "c", "d", "e"]
    md = to_markdown(found, "header")
    for f in found:
        assert f"| ({f.key}) | {f.title} | **{f.verdict}** |" in md
    rst = to_rst(found, "mobilenet_v2 * x")
    parts = docutils.publish_parts(rst, writer="html", settings_overrides={"report_level": 2, "halt_level": 2})
    assert "mobilenet_v2" in parts["body"] and "cannot be checked on this run" in parts["body"]


@pytest.mark.workflow
def test_tiny_run_summary_and_report_put_the_findings_first(tiny_run, tmp_path):
    import json
    import shutil

    from conftest import snakemake

    shutil.copytree(tiny_run, tmp_path, symlinks=True, dirs_exist_ok=True)
    summary = (tmp_path / "results/summary.md").read_text()
    for key in "abcde":
        assert f"| ({key}) |" in summary
    # one model, one dataset: (c) and (e) cannot be checked; (a), (b), (d) are decided either way
    assert "| (c) | The datasets' ranking by distance | **cannot be checked on this run** |" in summary
    assert "| (e) | ResNet50 stays closest" in summary and "one model configured (mnet)" in summary
    for table in ("table1_accuracy", "table2_reusability", "table2_layers"):
        tex = (tmp_path / f"results/tables/{table}.tex").read_text()
        assert r"\toprule" in tex and r"\bottomrule" in tex
    snakemake(tmp_path, "--configfile", str(tmp_path / "config.yaml"), "--report", "results/report.html")
    html = (tmp_path / "results/report.html").read_text()
    start = html.index('workflow_desc = "') + len("workflow_desc = ")
    description = json.loads(html[start:html.index('";\n', start) + 1])
    assert "Findings" in description and "(a) Early layers stay closer" in description
    assert description.index("Findings") < description.index("(e) ResNet50")
    for name in ("summary.md", "table1_accuracy.html", "table2_reusability.html", "table2_layers.html",
                 "metric_correlation.html"):
        assert name in html, name
