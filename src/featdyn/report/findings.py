"""Check the paper's observations on a run's own numbers.

Each observation (a)-(e) of the paper is checked on the models, datasets and metrics the run
configured, case by case (a case is one model, dataset and metric, or whatever the observation
compares), and gets one of three verdicts: it **holds**, it **does not hold**, or it **cannot be
checked on this run** (the run lacks what the observation is about: a second trained epoch, the
paper's datasets, a second model, ...). A case holds when the difference the paper describes has
the paper's sign *and* its bootstrap interval over the probe images excludes 0 (a difference
within its interval is not told apart from the choice of images: it does not hold). Without
intervals (bootstrap off) the sign alone decides, and the text says so. An observation holds when
every case that can be checked holds, does not hold when one of them does not (the text counts
them), and cannot be checked when no case can.

The observations and how they are read here:

(a) Early layers stay closer to the source than deep layers (Sec. 4.1, "Effect at different depth
    levels"): the last analysed layer's distance minus the first's, each averaged over epochs
    1..T, per (model, dataset, metric); Spearman's rho of depth against distance beside it.
(b) The distance grows across fine-tuning epochs ("Changes across fine-tuning iterations"): the
    layer-averaged distance at the last analysed epoch minus at the first (>= 1), per (model,
    dataset, metric); Spearman's rho of epoch against distance beside it.
(c) The datasets' ranking by distance (Table 2: AwA2 and 15-Scene closest, Fruits farthest): the
    run's own ranking of its datasets per (model, metric), with the interval of each step; the
    paper's ranking is checked where the run has Fruits and AwA2 or 15-Scene (recognised by name:
    a dataset whose name holds 'fruit', 'awa' or 'scene').
(d) The metrics agree (Pearson r 0.83 +- 0.43 between PWSM and Procrustes): the run's r between
    metrics of those kinds (pwsm or cca against procrustes; every pair when the run has none), in
    both readings (:mod:`featdyn.report.correlation`); a case holds when r lies within one of the paper's
    standard deviations of its mean (r >= 0.40) and, where there is one, its interval excludes 0.
(e) ResNet50 stays closest on the dataset farthest from the source (Table 2, Fruits): per metric,
    the dataset with the highest mean distance over the models, and the model closest on it; the
    lead over the runner-up with its interval. Needs two or more models, one of them a resnet50.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from featdyn.engine.bootstrap import Replicates, bootstrap_interval
from featdyn.report.tables import layer_average

HOLDS, FAILS, UNCHECKED = "holds", "does not hold", "cannot be checked on this run"
PAPER_R, PAPER_R_STD = 0.83, 0.43
PAPER_DATASETS = {"awa": "AwA2", "scene": "15-Scene", "fruit": "Fruits"}


@dataclass
class Case:
    subject: str
    verdict: str
    evidence: str


@dataclass
class Finding:
    key: str
    title: str
    paper: str
    method: str
    cases: list[Case] = field(default_factory=list)
    note: str = ""

    @property
    def verdict(self) -> str:
        return overall([c.verdict for c in self.cases])

    def tally(self) -> str:
        checked = [c for c in self.cases if c.verdict != UNCHECKED]
        if not checked:
            return self.note or "no case can be checked"
        held = sum(c.verdict == HOLDS for c in checked)
        return f"{held} of {len(checked)} cases hold" + (f"; {self.note}" if self.note else "")


def overall(verdicts: Sequence[str]) -> str:
    checked = [v for v in verdicts if v != UNCHECKED]
    if not checked:
        return UNCHECKED
    return HOLDS if all(v == HOLDS for v in checked) else FAILS


@dataclass
class RunNumbers:
    """What the checks read: the tidy scores of every metric, their bootstrap replicates keyed
    (metric, model, dataset), Table 2, the metric correlation table, the models' architectures
    (name -> torchvision arch) and the configured datasets and metrics in config order."""

    scores: pd.DataFrame
    replicates: Mapping[tuple[str, str, str], Replicates]
    table2: pd.DataFrame
    correlation: pd.DataFrame
    models: Mapping[str, str]
    datasets: Sequence[str]
    metrics: Sequence[str]
    level: float = 0.95
    method: str = "centred"

    def reps(self, metric: str, model: str, dataset: str) -> Replicates | None:
        r = self.replicates.get((metric, model, dataset))
        return r if r is not None and r.resamples else None


# -- numbers and intervals -------------------------------------------------------------------------

def fmt(x: float) -> str:
    return f"{x:.3f}" if np.isfinite(x) else "n/a"


def interval(run: RunNumbers, samples: np.ndarray | None, point: float) -> tuple[float, float]:
    """The run's interval of an estimate ``point`` from its replicates (NaN without)."""
    if samples is None or len(samples) == 0:
        return np.nan, np.nan
    lo, hi = bootstrap_interval(np.asarray(samples, dtype=float), point, run.level, run.method)
    return float(lo), float(hi)


def with_interval(x: float, lo: float, hi: float) -> str:
    return fmt(x) + (f" [{fmt(lo)}, {fmt(hi)}]" if np.isfinite(lo) and np.isfinite(hi) else "")


def positive(diff: float, lo: float, hi: float) -> str:
    """The verdict on a difference the paper says is positive."""
    if not np.isfinite(diff):
        return UNCHECKED
    if np.isfinite(lo):
        return HOLDS if diff > 0 and lo > 0 else FAILS
    return HOLDS if diff > 0 else FAILS


def beyond(lo: float, hi: float) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "no interval"
    return "beyond its interval" if lo > 0 or hi < 0 else "within its interval"


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    x, y = pd.Series(list(x), dtype=float), pd.Series(list(y), dtype=float)
    ok = x.notna() & y.notna()
    if ok.sum() < 3 or x[ok].nunique() < 2 or y[ok].nunique() < 2:
        return np.nan
    return float(x[ok].rank().corr(y[ok].rank()))


def _subject(*parts: str) -> str:
    return " × ".join(parts)


def _runs(run: RunNumbers):
    sc = run.scores
    for metric in run.metrics:
        for model in run.models:
            for dataset in run.datasets:
                sub = sc[(sc["metric"] == metric) & (sc["model"] == model) & (sc["dataset"] == dataset)]
                if len(sub):
                    yield metric, model, dataset, sub


def _rise(run: RunNumbers, subject: str, names: Sequence[str], xs: Sequence[float], values: Sequence[float],
          ends: np.ndarray | None, what: str, axis: str, unit: str) -> Case:
    """The case 'the distance rises from the first to the last point': the difference with its
    interval (``ends``: (B, 2) replicates of the first and last point) decides; Spearman's rho of
    ``xs`` against the values is reported beside it."""
    values = list(values)
    diff = float(values[-1] - values[0])
    lo, hi = interval(run, ends[:, 1] - ends[:, 0] if ends is not None else None, diff)
    return Case(subject, positive(diff, lo, hi),
                f"{names[0]} {fmt(values[0])}, {names[-1]} {fmt(values[-1])}: {what} {with_interval(diff, lo, hi)} "
                f"({beyond(lo, hi)}); rho({axis}, distance) {fmt(spearman(xs, values))} over {len(values)} {unit}")


# -- the checks ------------------------------------------------------------------------------------

def check_depth(run: RunNumbers) -> Finding:
    f = Finding("a", "Early layers stay closer to the source model than deep layers",
                "\"early layers inside a network have consistently lower distance ... features encoded at deeper "
                "layers have higher distance\" (Sec. 4.1)",
                "last analysed layer minus first, each averaged over epochs 1..T; its interval over the probe "
                "images; Spearman's rho of depth against distance")
    for metric, model, dataset, sub in _runs(run):
        trained = sub[sub["epoch"] >= 1]
        per = trained.groupby(["layer_index", "layer"])["value"].mean().reset_index().sort_values("layer_index")
        subject = _subject(model, dataset, metric)
        if len(per) < 2:
            f.cases.append(Case(subject, UNCHECKED, f"{len(per)} analysed layer(s) with trained epochs"))
            continue
        reps = run.reps(metric, model, dataset)
        ends = None if reps is None else reps.per_layer()[:, [reps.layers.index(per["layer"].iloc[i]) for i in (0, -1)]]
        f.cases.append(_rise(run, subject, list(per["layer"]), per["layer_index"], per["value"], ends,
                             "deep − early", "depth", "layers"))
    return f


def check_epochs(run: RunNumbers) -> Finding:
    f = Finding("b", "The distance to the source grows across fine-tuning epochs",
                "\"a predominantly upward trend in distance of all of the other layers ... as the models "
                "progress through the fine-tuning process\" (Sec. 4.1)",
                "layer-averaged distance at the last analysed epoch minus at the first epoch >= 1; its interval; "
                "Spearman's rho of epoch against distance")
    for metric, model, dataset, sub in _runs(run):
        avg = layer_average(sub)
        avg = avg[avg["epoch"] >= 1].sort_values("epoch")
        subject = _subject(model, dataset, metric)
        if len(avg) < 2:
            f.cases.append(Case(subject, UNCHECKED, f"{len(avg)} trained epoch(s) analysed: no trend to check"))
            continue
        reps = run.reps(metric, model, dataset)
        ends = None if reps is None else \
            reps.layer_average()[:, [reps.epochs.index(int(avg["epoch"].iloc[i])) for i in (0, -1)]]
        f.cases.append(_rise(run, subject, [f"epoch {int(e)}" for e in avg["epoch"]], avg["epoch"], avg["value"], ends,
                             "change", "epoch", "epochs"))
    return f


def paper_name(dataset: str) -> str | None:
    """The paper's dataset a configured dataset stands for, recognised by its name."""
    low = dataset.lower()
    hits = [name for key, name in PAPER_DATASETS.items() if key in low]
    return hits[0] if len(hits) == 1 else None


def _t2(run: RunNumbers, metric: str, model: str, dataset: str) -> tuple[float, np.ndarray | None]:
    row = run.table2[(run.table2["metric"] == metric) & (run.table2["model"] == model) & (run.table2["dataset"] == dataset)]
    mean = float(row["mean"].iloc[0]) if len(row) else np.nan
    reps = run.reps(metric, model, dataset)
    return mean, (reps.table2() if reps is not None else None)


def _gap(run: RunNumbers, a: tuple[float, np.ndarray | None], b: tuple[float, np.ndarray | None]
         ) -> tuple[float, float, float]:
    """b - a with its interval (replicates paired by index: the same resamples on one dataset,
    independent resamples on two)."""
    diff = b[0] - a[0]
    if a[1] is None or b[1] is None:
        return diff, np.nan, np.nan
    return (diff, *interval(run, b[1] - a[1], diff))


def check_datasets(run: RunNumbers) -> Finding:
    f = Finding("c", "The datasets' ranking by distance",
                "\"the lowest average distances ... on the AwA2 and 15-Scene datasets ..., while they have the "
                "highest distances on the Fruits dataset\" (Table 2)",
                "the configured datasets ranked by their Table 2 mean per model and metric, each step with the "
                "interval of the difference; the paper's ranking where Fruits and AwA2 or 15-Scene are configured")
    if len(run.datasets) < 2:
        f.note = f"one dataset configured ({', '.join(run.datasets)}): nothing to rank"
    for metric in run.metrics:
        for model in run.models:
            entries = {d: _t2(run, metric, model, d) for d in run.datasets}
            entries = {d: e for d, e in entries.items() if np.isfinite(e[0])}
            subject = _subject(model, metric)
            if len(entries) < 2:
                f.cases.append(Case(subject, UNCHECKED, "fewer than two datasets with a Table 2 entry"))
                continue
            order = sorted(entries, key=lambda d: entries[d][0])
            steps = []
            for a, b in zip(order, order[1:]):
                diff, lo, hi = _gap(run, entries[a], entries[b])
                steps.append(f"{a} {fmt(entries[a][0])} < {b} {fmt(entries[b][0])} "
                             f"(+{with_interval(diff, lo, hi)}, {beyond(lo, hi)})")
            ranking = "; ".join(steps)
            paper = {d: paper_name(d) for d in order if paper_name(d)}
            fruits = [d for d, p in paper.items() if p == "Fruits"]
            others = [d for d, p in paper.items() if p != "Fruits"]
            if not fruits or not others:
                f.cases.append(Case(subject, UNCHECKED, f"the run's ranking: {ranking}; the paper's datasets "
                                                        f"(Fruits and AwA2 or 15-Scene) are not configured"))
                continue
            fr = fruits[0]
            worst = max(others, key=lambda d: entries[d][0])
            diff, lo, hi = _gap(run, entries[worst], entries[fr])
            verdict = positive(diff, lo, hi)
            f.cases.append(Case(subject, verdict, f"{ranking}; Fruits ({fr}) minus the farthest of "
                                                  f"{', '.join(others)}: {with_interval(diff, lo, hi)}"))
    return f


def _kind(run: RunNumbers, metric: str) -> str:
    k = run.scores.loc[run.scores["metric"] == metric, "kind"]
    return str(k.iloc[0]) if len(k) else metric


def check_agreement(run: RunNumbers) -> Finding:
    low = PAPER_R - PAPER_R_STD
    f = Finding("d", "The metrics agree",
                f"\"the mean value for Pearson's r as {PAPER_R}, with a standard deviation of {PAPER_R_STD}\" "
                "between PWSM and Orthogonal Procrustes (Sec. 4.1)",
                f"the run's Pearson r between metrics of those kinds (pwsm or cca against procrustes; every pair "
                f"when there is none), over all models and datasets, in both readings; a case holds when r >= "
                f"{low:.2f} (within one of the paper's standard deviations of its mean) and its interval, where "
                f"there is one, excludes 0")
    corr = run.correlation[run.correlation["model"] == "all"]
    if corr.empty:
        f.note = "fewer than two metrics configured"
        return f

    def paper_pair(row) -> bool:
        kinds = {_kind(run, row["metric_a"]), _kind(run, row["metric_b"])}
        return "procrustes" in kinds and bool(kinds & {"pwsm", "cca"}) and len(kinds) == 2

    chosen = corr[corr.apply(paper_pair, axis=1)]
    if chosen.empty:
        chosen = corr
        f.note = "no pwsm/cca and procrustes pair configured: every pair is checked"
    if "filters_per_class" not in set(corr["reading"]):
        f.note = "; ".join(filter(None, [f.note, "the per-filter reading (the authors') needs two filter metrics"]))
    for _, row in chosen.iterrows():
        subject = f"{row['metric_a']} vs {row['metric_b']} ({row['reading']})"
        r, lo, hi = float(row["r"]), float(row.get("r_ci_low", np.nan)), float(row.get("r_ci_high", np.nan))
        spread = f" ± {fmt(row['r_std'])}" if np.isfinite(row["r_std"]) else ""
        text = (f"r {with_interval(r, lo, hi)}{spread}, Spearman rho {fmt(row.get('rho', np.nan))}, "
                f"n {int(row['n'])}, undefined {int(row['undefined'])}; the paper: {PAPER_R} ± {PAPER_R_STD}")
        if not np.isfinite(r):
            verdict = UNCHECKED
        else:
            verdict = HOLDS if r >= low and (not np.isfinite(lo) or lo > 0) else FAILS
        f.cases.append(Case(subject, verdict, text))
    return f


def check_architecture(run: RunNumbers) -> Finding:
    f = Finding("e", "ResNet50 stays closest on the dataset farthest from the source",
                "\"On the Fruits dataset, which has shown that adapted features have the lowest similarity, these "
                "features from Resnet50 are closer to the pre-trained features ... compared to those from VGG19 and "
                "Densenet121\" (Table 2)",
                "per metric, the dataset with the highest Table 2 mean over the models, the model closest on it, "
                "and its lead over the runner-up with the interval")
    resnets = [m for m, arch in run.models.items() if arch == "resnet50"]
    if len(run.models) < 2:
        f.note = f"one model configured ({', '.join(run.models)}): no architecture to compare"
    elif not resnets:
        f.note = "no resnet50 configured"
    for metric in run.metrics:
        t2 = run.table2[run.table2["metric"] == metric]
        if t2.empty:
            continue
        far = t2.groupby("dataset")["mean"].mean().idxmax()
        on = t2[t2["dataset"] == far].sort_values("mean")
        subject = _subject(metric, f"farthest dataset {far}")
        if len(on) < 2:
            f.cases.append(Case(subject, UNCHECKED, f"only {', '.join(on['model'])} on {far} "
                                                    f"(mean {fmt(float(on['mean'].iloc[0]))})"))
            continue
        best, runner = on.iloc[0]["model"], on.iloc[1]["model"]
        diff, lo, hi = _gap(run, _t2(run, metric, best, far), _t2(run, metric, runner, far))
        text = (f"closest: {best} ({run.models.get(best, '?')}) {fmt(on.iloc[0]['mean'])}, then {runner} "
                f"{fmt(on.iloc[1]['mean'])}: lead {with_interval(diff, lo, hi)} ({beyond(lo, hi)})")
        if not resnets:
            f.cases.append(Case(subject, UNCHECKED, text + "; no resnet50 configured"))
            continue
        verdict = positive(diff, lo, hi) if run.models.get(best) == "resnet50" else FAILS
        f.cases.append(Case(subject, verdict, text))
    return f


CHECKS = (check_depth, check_epochs, check_datasets, check_agreement, check_architecture)


def findings(run: RunNumbers) -> list[Finding]:
    return [check(run) for check in CHECKS]


# -- rendering -------------------------------------------------------------------------------------

def to_markdown(found: Sequence[Finding], header: str) -> str:
    """``results/summary.md``: a verdict table, then each observation with its cases."""
    out = ["# Findings: the paper's observations on this run", "", header, "",
           "| | observation | verdict | |", "|---|---|---|---|"]
    out += [f"| ({f.key}) | {f.title} | **{f.verdict}** | {f.tally()} |" for f in found]
    for f in found:
        out += ["", f"## ({f.key}) {f.title}: {f.verdict}", "", f"The paper: {f.paper}.", "",
                f"Checked as: {f.method}.", ""]
        if f.note:
            out += [f"Note: {f.note}.", ""]
        if f.cases:
            out += ["| case | verdict | numbers |", "|---|---|---|"]
            out += [f"| {c.subject} | {c.verdict} | {c.evidence} |" for c in f.cases]
    return "\n".join(out) + "\n"


def rst_escape(text: str) -> str:
    return re.sub(r"([\\*`_|])", r"\\\1", str(text))


def to_rst(found: Sequence[Finding], header: str) -> str:
    """The same for the report (reStructuredText, included by workflow/report/workflow.rst)."""
    out = ["Findings", "--------", "", rst_escape(header), ""]
    for f in found:
        out += [f"**({f.key}) {rst_escape(f.title)}: {f.verdict}** ({rst_escape(f.tally())}).",
                f"The paper: {rst_escape(f.paper)}. Checked as: {rst_escape(f.method)}.", ""]
        out += [f"- {rst_escape(c.subject)}: *{c.verdict}*; {rst_escape(c.evidence)}" for c in f.cases]
        out += [""]
    return "\n".join(out) + "\n"
