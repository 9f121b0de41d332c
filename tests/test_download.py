"""Datasets given as a URL: download (file://), sha256 check, unpack; alone and through Snakemake."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from featdyn import FeatdynError
from featdyn.data.download import download, fetch_dataset, unpack
from featdyn.spec.config import check, dataset_roots

from conftest import SNAKEFILE, VENV_BIN, make_tree


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tar_of(tree: Path, out: Path, arcname: str) -> Path:
    with tarfile.open(out, "w:gz") as tf:
        tf.add(tree, arcname=arcname)
    return out


def zip_of(tree: Path, out: Path, arcname: str) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for f in sorted(tree.rglob("*")):
            zf.write(f, f"{arcname}/{f.relative_to(tree)}")
    return out


@pytest.fixture
def archives(tmp_path):
    tree = make_tree(tmp_path / "src" / "colours", classes=2, per_class=6, size=12)
    return {"tar": tar_of(tree, tmp_path / "colours.tar.gz", "colours"),
            "zip": zip_of(tree, tmp_path / "colours.zip", "bundle/colours")}


@pytest.mark.parametrize("kind, inside", [("tar", "colours"), ("zip", "bundle/colours")])
def test_file_url_is_downloaded_checked_and_unpacked(tmp_path, archives, kind, inside):
    archive = archives[kind]
    out = tmp_path / "data" / "raw"
    fetch_dataset(archive.as_uri(), sha256(archive), out, what="datasets.d")
    original = sorted(p.relative_to(tmp_path / "src" / "colours") for p in (tmp_path / "src" / "colours").rglob("*.png"))
    assert sorted(p.relative_to(out / inside) for p in (out / inside).rglob("*.png")) == original
    assert sorted(p.name for p in out.parent.iterdir()) == ["raw"], "the archive is not kept"


def test_sha256_mismatch_stops_with_both_hashes_and_keeps_nothing(tmp_path, archives):
    archive = archives["tar"]
    wrong = "0" * 64
    out = tmp_path / "data" / "raw"
    with pytest.raises(FeatdynError) as err:
        fetch_dataset(archive.as_uri(), wrong, out, what="datasets.colours")
    msg = str(err.value)
    assert "datasets.colours.sha256" in msg and sha256(archive) in msg and wrong in msg and archive.name in msg
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_unreachable_url_and_bad_archives_are_named(tmp_path):
    with pytest.raises(FeatdynError, match=r"datasets.d.url: cannot download .*nowhere.zip"):
        download((tmp_path / "nowhere.zip").as_uri(), "0" * 64, tmp_path / "x", what="datasets.d")
    assert not (tmp_path / "x").exists()
    (tmp_path / "notes.txt").write_text("neither tar nor zip")
    with pytest.raises(FeatdynError, match="notes.txt is neither a tar nor a zip"):
        unpack(tmp_path / "notes.txt", tmp_path / "out")
    tree = make_tree(tmp_path / "t", classes=1, per_class=30, size=16)
    full = tar_of(tree, tmp_path / "full.tar", "t").read_bytes()
    (tmp_path / "cut.tar").write_bytes(full[: len(full) // 2])
    with pytest.raises(FeatdynError, match="cannot unpack .*cut.tar"):
        unpack(tmp_path / "cut.tar", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_archive_members_outside_the_folder_are_refused(tmp_path):
    evil = tmp_path / "evil.tar"
    (tmp_path / "payload").write_text("x")
    with tarfile.open(evil, "w") as tf:
        tf.add(tmp_path / "payload", arcname="../escaped")
    with pytest.raises(FeatdynError, match="cannot unpack"):
        unpack(evil, tmp_path / "out" / "raw")
    assert not (tmp_path / "out" / "escaped").exists() and not (tmp_path / "escaped").exists()


def test_url_dataset_config_forms():
    spec = {"url": "file:///a.zip", "sha256": "a" * 64}
    assert dataset_roots("d", spec, "results/data/d") == {"root": "results/data/d/raw"}
    assert dataset_roots("d", spec | {"path": "x/y"}, "r") == {"root": "r/raw/x/y"}
    assert dataset_roots("d", spec | {"train": "Tr", "test": "Te"}, "r") == {"train": "r/raw/Tr", "test": "r/raw/Te"}
    assert dataset_roots("d", {"train": "a", "test": "b"}, "r") == {"train": "a", "test": "b"}
    base = {"models": {"m": {"arch": "mobilenet_v2", "weights": None}}, "metrics": {"p": {"kind": "procrustes"}}}
    for bad, key in [(spec | {"train": "Tr"}, "datasets.d"), (spec | {"path": "/abs"}, "datasets.d.path"),
                     (spec | {"path": "../up"}, "datasets.d.path"), ({"url": "file:///a.zip"}, "datasets.d.sha256")]:
        with pytest.raises(FeatdynError, match=key):
            check(base | {"datasets": {"d": bad}})
    check(base | {"datasets": {"d": spec | {"path": "x"}}})  # not downloaded yet: checked when unpacked


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(VENV_BIN / "snakemake"), "--snakefile", str(SNAKEFILE), "--directory", str(workdir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=300)


@pytest.mark.slow
@pytest.mark.workflow
def test_download_rule_through_snakemake(tmp_path, archives):
    archive = archives["zip"]
    cfg = {"image_size": 16, "models": {"m": {"arch": "mobilenet_v2", "weights": None}},
           "datasets": {"good": {"url": archive.as_uri(), "sha256": sha256(archive), "path": "bundle/colours"},
                        "bad": {"url": archive.as_uri(), "sha256": "f" * 64, "path": "bundle/colours"}},
           "probe": {"per_class": 1}, "metrics": {"p": {"kind": "procrustes"}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "--configfile", str(tmp_path / "config.yaml"), "--cores", "2", "--keep-going",
                     "results/data/good/manifest.csv", "results/data/bad/manifest.csv")
    assert proc.returncode != 0, "the bad sha256 must fail its job"
    manifest = pd.read_csv(tmp_path / "results/data/good/manifest.csv")
    assert len(manifest) == 12 and manifest["path"].str.startswith("results/data/good/raw/bundle/colours/").all()
    log = (tmp_path / "results/logs/download_dataset/bad.log").read_text()
    assert "datasets.bad.sha256" in log and sha256(archive) in log
    bad = tmp_path / "results/data/bad"
    assert not bad.exists() or list(bad.iterdir()) == [], "nothing half-written is left"
