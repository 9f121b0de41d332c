"""Cost of the qualitative stage (one `visualize` job) against the floor of any such job.

Runs, each in a fresh Python process, ``--repeats`` times alternately:

- baseline: importing what every figure job imports (torch, torchvision, zarr, matplotlib, pandas);
- visualize: the whole job of one (model, dataset) on a finished run's results: choose the units,
  trace the receptive fields, compute the class-average patches and heatmaps, draw and save both
  grids as PNG and PDF (to a temporary folder).

Prints both times, their ratio, and the job's parts (from inside the visualize process).
Needs a finished run (``make demo`` first); reads its config for the visualize block.

    tools/with_tcmalloc.sh .venv/bin/python benchmarks/bench_visualize.py [--model mobilenet_v2] [--dataset textures]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BASELINE = "import torch, torchvision, zarr, matplotlib.pyplot, pandas"

JOB = r"""
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
import yaml
from featdyn.spec import config as fdconfig
from featdyn.data.datasets import ImageCache
from featdyn.report.figures import heatmap_grid, patch_grid, save_figure
from featdyn.data.stores import expected_attrs
from featdyn.atomic import write_csv
from featdyn.report.visualize import fields_for, heatmap_rows, open_stores, patch_rows, units_for_run
t1 = time.perf_counter()
cfg_path, root, model, dataset, out = sys.argv[1:6]
config = yaml.safe_load(open(cfg_path))
epochs = fdconfig.visual_epochs(config, model, dataset)
last = fdconfig.analysed_epochs(config, model, dataset)[-1]
metric = fdconfig.rank_metric(config)
r = Path(root) / "results"
expect = expected_attrs(r / f"data/{dataset}/dataset.json", model=model, dataset=dataset)
cache = ImageCache(r / f"data/{dataset}")
stores = open_stores({e: r / f"activations/{model}/{dataset}/epoch_{e}.zarr" for e in epochs}, expect)
tables = [r / f"filters/{metric}/{model}/{dataset}/epoch_{e}.csv" for e in (0, last)] if metric else None
from featdyn.data.stores import open_store
lst = None if metric else open_store(r / f"activations/{model}/{dataset}/epoch_{last}.zarr", expect)
units = units_for_run(fdconfig.visualize_block(config), model=model, dataset=dataset, cache=cache,
                      source=stores[0], last=lst, last_epoch=last, tables=tables, rank_metric=metric)
write_csv(units, f"{out}/units.csv")
t2 = time.perf_counter()
src = stores[0]
fields = fields_for(src.attrs["arch"], config["models"][model].get("width", 1.0), units["layer"].unique(),
                    int(src.attrs["image_size"]))
t3 = time.perf_counter()
patches = patch_rows(units, stores, cache, fields, epochs)
heat = heatmap_rows(units, stores, cache, fields, epochs)
t4 = time.perf_counter()
fig, lay = patch_grid(patches, epochs, title="t")
save_figure(fig, f"{out}/p.png", f"{out}/p.pdf", lay)
fig, lay = heatmap_grid(heat, epochs, title="t")
save_figure(fig, f"{out}/h.png", f"{out}/h.pdf", lay)
t5 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "choose units": t2 - t1, "receptive fields": t3 - t2,
                  "patches + heatmaps": t4 - t3, "draw + save": t5 - t4}))
"""


def run(args: list[str]) -> tuple[float, str]:
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - t, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=str(REPO), help="folder holding the finished run's results/")
    ap.add_argument("--config", default=str(REPO / "config/config.yaml"))
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--dataset", default="textures")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    if not (Path(a.root) / "results/activations" / a.model / a.dataset).is_dir():
        sys.exit(f"no finished run under {a.root}/results for {a.model} x {a.dataset}: run `make demo` first")
    base, job, parts = [], [], []
    with tempfile.TemporaryDirectory() as out:
        for _ in range(a.repeats):
            base.append(run(["-c", BASELINE])[0])
            seconds, stdout = run(["-c", JOB, a.config, a.root, a.model, a.dataset, out])
            job.append(seconds)
            parts.append(json.loads(stdout.strip().splitlines()[-1]))
    b, j = statistics.median(base), statistics.median(job)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print(f"baseline (imports only): median {b:.2f} s of {[round(x, 2) for x in base]}")
    print(f"visualize job ({a.model} x {a.dataset}): median {j:.2f} s of {[round(x, 2) for x in job]}")
    print(f"ratio job / imports: {j / b:.2f}")
    for key in parts[0]:
        print(f"  {key:20s} median {statistics.median(p[key] for p in parts):.2f} s")


if __name__ == "__main__":
    main()
