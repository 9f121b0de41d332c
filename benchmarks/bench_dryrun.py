"""Workflow scale: how long `snakemake -n` takes on a large grid, and what a cluster job pays to
parse the workflow before its own work.

- dry run: `snakemake -n --quiet rules` on a generated config of 10 models x 10 datasets x 50 epochs
  x 4 metrics (3 layer metrics, 1 filter metric: 20,934 jobs), datasets pointing at tiny generated
  trees (the config check runs as for real data; nothing is read beyond the first image per class).
- baseline: a bare Snakefile generated with the same jobs and dependencies (the same rules, file
  names and wildcards, no featdyn code, no params): what Snakemake itself needs for this DAG.
  ratio = ours / baseline in CPU seconds (1.0: the workflow adds nothing to Snakemake's own cost);
  CPU seconds are steadier than wall seconds on a shared machine, both are printed.
- job parse: the command a cluster job runs before its own work (`--mode remote --target-jobs`),
  here as a dry run of one score job of the same grid, against `snakemake --version` (Snakemake's
  start-up alone).
- with ``--ref REF``: the same timings for the workflow at git revision REF (exported to a temporary
  folder), for a before/after comparison in one run.

    .venv/bin/python benchmarks/bench_dryrun.py [--ref main] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
ARCHS = ["mobilenet_v2", "resnet50", "vgg19", "densenet121"]


def grid_config(root: Path, models: int, datasets: int, epochs: int) -> Path:
    """A config of ``models`` x ``datasets`` over ``epochs`` with 3 layer and 1 filter metric; each
    dataset a tree of 2 classes x 1 tiny image."""
    for d in range(datasets):
        for c in range(2):
            folder = root / "data" / f"set{d}" / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), 40 * c, np.uint8)).save(folder / "img.png")
    cfg = {
        "image_size": 32,
        "models": {f"model{m}": {"arch": ARCHS[m % len(ARCHS)], "weights": None} for m in range(models)},
        "datasets": {f"set{d}": {"path": f"data/set{d}"} for d in range(datasets)},
        "training": {"epochs": epochs},
        "metrics": {"procrustes": {"kind": "procrustes"}, "pwsm": {"kind": "pwsm", "alpha": 0.5},
                    "cka": {"kind": "cka"}, "procrustes_filter": {"kind": "procrustes", "granularity": "filter"}},
    }
    path = root / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


BARE = '''
M = [f"model{{m}}" for m in range({models})]
D = [f"set{{d}}" for d in range({datasets})]
E = list(range({epochs} + 1))
S = ["procrustes", "pwsm", "cka", "procrustes_filter"]
F = ["procrustes_filter"]
wildcard_constraints:
    epoch=r"\\d+"
rule all:
    input: "results/tables/table1_accuracy.csv", "results/tables/table2_reusability.csv",
           "results/tables/metric_correlation.csv", expand("results/figures/similarity_{{m}}.png", m=M)
rule prepare_dataset:
    output: "results/data/{{dataset}}/manifest.csv", "results/data/{{dataset}}/cache.npy", "results/data/{{dataset}}/dataset.json"
    shell: "touch {{output}}"
rule fetch_weights:
    output: "results/weights/{{model}}.pt"
    shell: "touch {{output}}"
rule finetune_epoch:
    input: lambda w: ["results/data/%s/manifest.csv" % w.dataset] + (["results/weights/%s.pt" % w.model] if int(w.epoch) == 0 else ["results/checkpoints/%s/%s/epoch_%d.pt" % (w.model, w.dataset, int(w.epoch) - 1)])
    output: "results/checkpoints/{{model}}/{{dataset}}/epoch_{{epoch}}.pt", "results/checkpoints/{{model}}/{{dataset}}/epoch_{{epoch}}.json"
    shell: "touch {{output}}"
rule extract:
    input: "results/data/{{dataset}}/manifest.csv", "results/checkpoints/{{model}}/{{dataset}}/epoch_{{epoch}}.pt"
    output: directory("results/activations/{{model}}/{{dataset}}/epoch_{{epoch}}.zarr")
    shell: "mkdir -p {{output}}"
rule source_stats:
    input: "results/activations/{{model}}/{{dataset}}/epoch_0.zarr"
    output: "results/stats/{{model}}/{{dataset}}/source.npz"
    shell: "touch {{output}}"
rule layer_stats:
    input: "results/activations/{{model}}/{{dataset}}/epoch_0.zarr", "results/activations/{{model}}/{{dataset}}/epoch_{{epoch}}.zarr", "results/stats/{{model}}/{{dataset}}/source.npz"
    output: "results/stats/{{model}}/{{dataset}}/epoch_{{epoch}}.npz"
    shell: "touch {{output}}"
rule filter_scores:
    input: "results/activations/{{model}}/{{dataset}}/epoch_0.zarr", "results/activations/{{model}}/{{dataset}}/epoch_{{epoch}}.zarr"
    output: "results/filters/{{metric}}/{{model}}/{{dataset}}/epoch_{{epoch}}.csv"
    wildcard_constraints: metric="|".join(F)
    shell: "touch {{output}}"
rule score:
    input: lambda w: ["results/filters/%s/%s/%s/epoch_%d.csv" % (w.metric, w.model, w.dataset, e) for e in E] if w.metric in F else ["results/stats/%s/%s/source.npz" % (w.model, w.dataset)] + ["results/stats/%s/%s/epoch_%d.npz" % (w.model, w.dataset, e) for e in E]
    output: "results/scores/{{metric}}/{{model}}/{{dataset}}.csv"
    shell: "touch {{output}}"
rule table1:
    input: ["results/checkpoints/%s/%s/epoch_%d.json" % (m, d, e) for m in M for d in D for e in E]
    output: "results/tables/table1_accuracy.csv"
    shell: "touch {{output}}"
rule table2:
    input: ["results/scores/%s/%s/%s.csv" % (s, m, d) for s in S for m in M for d in D]
    output: "results/tables/table2_reusability.csv"
    shell: "touch {{output}}"
rule metric_correlation:
    input: ["results/scores/%s/%s/%s.csv" % (s, m, d) for s in S for m in M for d in D]
    output: "results/tables/metric_correlation.csv"
    shell: "touch {{output}}"
rule similarity_curves:
    input: lambda w: ["results/scores/%s/%s/%s.csv" % (s, w.model, d) for s in S for d in D]
    output: "results/figures/similarity_{{model}}.png"
    shell: "touch {{output}}"
'''


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, output) of a command. On a shared machine the CPU time (user +
    system of the process) is the steadier figure: the wall time also counts waiting for a core."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, proc.stdout + proc.stderr


def total_jobs(out: str) -> int:
    return next(int(line.split()[1]) for line in out.splitlines() if line.startswith("total "))


def workflow_at(ref: str, dst: Path) -> Path:
    """The repository's tracked files at git revision ``ref``, in ``dst``."""
    archive = dst / "ref.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), ref], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dst / "ref", filter="data")
    return dst / "ref"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--datasets", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--ref", help="also time the workflow at this git revision (e.g. main)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_dryrun_") as tmp:
        tmp = Path(tmp)
        config = grid_config(tmp / "work", args.models, args.datasets, args.epochs)
        bare = tmp / "bare" / "Snakefile"
        bare.parent.mkdir()
        bare.write_text(BARE.format(models=args.models, datasets=args.datasets, epochs=args.epochs))
        workflows = {"ours": REPO}
        if args.ref:
            workflows[f"at {args.ref}"] = workflow_at(args.ref, tmp)
        score_job = "score:metric=procrustes,model=model0,dataset=set0"
        rows = {}
        for name, root in [*workflows.items(), ("baseline (bare Snakefile)", None)]:
            env = os.environ | {"PYTHONPATH": str((root or REPO) / "src")}
            snakefile = root / "Snakefile" if root else bare
            base = [str(SNAKEMAKE), "--snakefile", str(snakefile), "--directory", str(tmp / "work"),
                    "--configfile", str(config)]
            dry, job = [], []
            for _ in range(args.repeats):
                wall, cpu, out = timed(base + ["-n", "--quiet", "rules"], tmp, env)
                dry.append((wall, cpu))
                if root:
                    wall, cpu, _ = timed(base + ["--target-jobs", score_job, "--allowed-rules", "score", "--cores",
                                                "1", "--mode", "remote", "--nolock", "--force", "-n"], tmp, env)
                    job.append((wall, cpu))
            rows[name] = (median(dry), total_jobs(out), median(job) if job else None)
        start = median([timed([str(SNAKEMAKE), "--version"], tmp, os.environ.copy())[:2] for _ in range(args.repeats)])

    load = os.getloadavg()[0]
    print(f"{args.models} models x {args.datasets} datasets x {args.epochs} epochs x 4 metrics, "
          f"{os.cpu_count()} CPUs, load {load:.1f} at the end, median of {args.repeats}; wall s (CPU s)")
    base_wall, base_cpu = rows["baseline (bare Snakefile)"][0]
    print(f"{'workflow':28s} {'jobs':>7s} {'dry run':>16s} {'ratio (CPU)':>12s} {'job parse':>16s}")
    for name, ((wall, cpu), jobs, job) in rows.items():
        parse = f"{job[0]:7.1f} ({job[1]:5.1f})" if job is not None else f"{'-':>16s}"
        print(f"{name:28s} {jobs:7d} {wall:7.1f} ({cpu:6.1f}) {cpu / base_cpu:11.2f}x {parse}")
    print(f"snakemake --version (start-up alone): {start[0]:.1f} ({start[1]:.1f})")


def median(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


if __name__ == "__main__":
    main()
