"""Before anything runs: the jobs per rule and the disk per stage that a config asks for.

    .venv/bin/python tools/plan.py [--configfile config/paper.yaml ...] [--images NAME=N] [--classes NAME=K]
    make plan CONFIG="config/paper.yaml" PLAN_ARGS="--images awa2=37322 ..."

Jobs per rule are Snakemake's own count (`snakemake -n --forceall --quiet rules`, every job of the
config). The disk estimate is featdyn.nets.disk's: image caches, checkpoints, optimizer states,
activation stores, statistics, tables. Dataset sizes are counted on disk (image files per class
folder, cheap: no image is opened); a dataset that is not there yet (not downloaded) needs its
number of images (--images) and, unless the config draws `classes`, of classes (--classes). For the
dry run such a dataset is stood in for by a tiny tree with that many classes (jobs do not depend
on the images).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
sys.path.insert(0, str(REPO / "src"))

from featdyn import FeatdynError  # noqa: E402
from featdyn.nets.disk import DatasetSize, estimate, human, table  # noqa: E402
from featdyn.spec import config as fdconfig  # noqa: E402
from featdyn.spec import paths  # noqa: E402
from featdyn.spec.fingerprints import image_files  # noqa: E402

# The demo datasets as featdyn.data.demo_data writes them: 64 tiles from each of 3 photographs (512 px),
# 40 digits of each of 10 classes.
DEMO_SIZES = {"textures": DatasetSize(3 * 64, 3), "digits": DatasetSize(10 * 40, 10)}


def merged(files: list[Path]) -> dict:
    """The config files merged in order, nested keys too, as Snakemake merges --configfile."""
    def update(base: dict, new: dict) -> dict:
        for k, v in new.items():
            base[k] = update(dict(base.get(k) or {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        return base

    config: dict = {}
    for f in files:
        update(config, yaml.safe_load(f.read_text()) or {})
    return config


def counted(roots: dict[str, str], workdir: Path) -> tuple[int, int] | None:
    """(images, classes) of a dataset's folders, or None where a folder is missing."""
    images, classes = 0, None
    for role, root in roots.items():
        folder = workdir / root
        if not folder.is_dir():
            return None
        class_dirs = [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]
        images += sum(len(image_files(d)) for d in class_dirs)
        if role in ("root", "train"):
            classes = len(class_dirs)
    return images, classes or 0


def dataset_sizes(config: dict, workdir: Path, images: dict, classes: dict) -> tuple[dict, list[str]]:
    """({dataset: DatasetSize}, [datasets not on disk])."""
    sizes, missing, unknown = {}, [], []
    for name, spec in config["datasets"].items():
        drawn = spec.get("classes")
        if "demo" in spec:
            found = (DEMO_SIZES[spec["demo"]].images, DEMO_SIZES[spec["demo"]].classes)
        else:
            found = counted(fdconfig.dataset_roots(name, spec, paths.DATA.format(dataset=name)), workdir)
            if found is None:
                missing.append(name)
        n_images = images.get(name, found[0] if found else None)
        n_classes = classes.get(name, found[1] if found else drawn)
        if n_images is None or n_classes is None:
            unknown.append(name)
            continue
        if drawn and n_classes > drawn:  # the config keeps `classes` of them (mean class size)
            n_images, n_classes = round(n_images * drawn / n_classes), drawn
        sizes[name] = DatasetSize(int(n_images), int(n_classes))
    if unknown:
        raise SystemExit(f"not on disk: {unknown}; give their sizes, e.g. --images {unknown[0]}=10000 "
                         f"--classes {unknown[0]}=50")
    return sizes, missing


def stand_ins(config: dict, missing: list[str], sizes: dict, tmp: Path) -> Path:
    """A config overlay pointing each missing dataset at a tiny tree with its number of classes."""
    from PIL import Image

    overlay: dict = {"datasets": {}}
    for name in missing:
        spec = config["datasets"][name]
        if "url" in spec:
            continue  # downloaded by a job: nothing to check before
        n = max(sizes[name].classes, spec.get("classes") or 0)
        roles = ["train", "test"] if "train" in spec else ["path"]
        for role in roles:
            for c in range(n):
                folder = tmp / name / role / f"class_{c:03d}"
                folder.mkdir(parents=True)
                Image.new("RGB", (8, 8)).save(folder / "stand_in.png")
            overlay["datasets"].setdefault(name, {})[role] = str(tmp / name / role)
    path = tmp / "stand_ins.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return path


def jobs_per_rule(configfiles: list[Path], workdir: Path) -> str:
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(SNAKEFILE),
           "--directory", str(workdir), "--configfile", *map(str, configfiles), "-n", "--forceall", "--quiet",
           "rules"]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"snakemake dry run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    table = []
    for line in proc.stdout.splitlines():  # the first job table (Snakemake prints it twice)
        if len(line.split()) == 2 and (line.split()[1].isdigit() or line.startswith("job")):
            table.append(line)
            if line.startswith("total"):
                break
    return "\n".join(table)


def pairs(items: list[str], what: str) -> dict[str, int]:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if not value.isdigit():
            raise SystemExit(f"--{what} {item!r}: expected NAME=NUMBER")
        out[name] = int(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configfile", nargs="+", type=Path, default=[REPO / "config" / "config.yaml"])
    ap.add_argument("--directory", type=Path, default=Path.cwd(), help="where Snakemake would run")
    ap.add_argument("--images", action="append", default=[], help="NAME=N: images of a dataset not on disk")
    ap.add_argument("--classes", action="append", default=[], help="NAME=K: its classes")
    args = ap.parse_args()

    config = fdconfig.with_defaults(merged(args.configfile))
    for key in ("datasets", "models", "metrics"):
        if key not in config:
            raise SystemExit(f"{key}: missing from {', '.join(map(str, args.configfile))}")
    try:
        sizes, missing = dataset_sizes(config, args.directory, pairs(args.images, "images"),
                                       pairs(args.classes, "classes"))
        stages = estimate(config, sizes)
    except FeatdynError as exc:
        raise SystemExit(str(exc)) from None
    with tempfile.TemporaryDirectory(prefix="featdyn_plan_") as tmp:
        files = list(args.configfile) + ([stand_ins(config, missing, sizes, Path(tmp))] if missing else [])
        jobs = jobs_per_rule(files, args.directory)

    print(f"Plan for {' + '.join(str(f) for f in args.configfile)}: {len(config['models'])} models x "
          f"{len(sizes)} datasets, {config['image_size']} px")
    print("datasets: " + ", ".join(f"{n} {s.images:,} images / {s.classes} classes"
                                   + (" (given)" if n in missing else "") for n, s in sizes.items()))
    for name, spec in config["models"].items():  # `layers: auto` is resolved here, on the meta device
        how = spec["layers"] if isinstance(spec["layers"], str) else "given"
        print(f"layers of {name} ({spec['arch']}, {how}): {', '.join(fdconfig.layers_of(config, name))}")
    print(f"\nJobs per rule (snakemake -n --forceall):\n{jobs}\n")
    print("Disk per stage (estimate; kept: at the end of the run; peak: at most while it runs):\n")
    print(table(stages))
    print(f"\nKept {human(sum(s.kept for s in stages))}; logs and Snakemake's metadata come on top (small).")


if __name__ == "__main__":
    main()
