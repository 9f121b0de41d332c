"""Dependencies are pinned in one place; the conda env carries the same pins."""

import re

import yaml

from conftest import REPO, SNAKEFILE


def pins(lines):
    out = {}
    for line in lines:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)==([^\s#]+)", line)
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def test_conda_env_pins_match_requirements():
    req = pins((REPO / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((REPO / "envs" / "featdyn.yaml").read_text())
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_pins = pins(pip_block)
    assert conda_pins, "envs/featdyn.yaml pins nothing"
    for name, version in conda_pins.items():
        assert req.get(name) == version, f"{name}: envs/featdyn.yaml has {version}, requirements.txt {req.get(name)}"
    for must in ("torch", "torchvision", "zarr", "numpy"):
        assert must in conda_pins


def test_every_rule_has_a_log_a_benchmark_and_a_conda_env():
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        for rule in re.split(r"\n(?=rule |localrule )", text)[1:]:
            name = rule.split()[1].rstrip(":")
            assert "\n    log:" in rule, f"{smk.name}: rule {name} has no log:"
            assert "\n    benchmark:" in rule, f"{smk.name}: rule {name} has no benchmark:"
            assert "\n    conda:" in rule, f"{smk.name}: rule {name} has no conda:"


def test_jobs_never_import_another_checkouts_library(tmp_path):
    """Where the environment's featdyn is not this checkout's (two clones, one venv), the workflow
    stops before any job, naming both and the fix."""
    import os
    import subprocess

    from conftest import VENV_BIN

    other = tmp_path / "other_clone" / "src" / "featdyn"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("")
    env = os.environ | {"PYTHONPATH": str(other.parent)}
    cmd = [str(VENV_BIN / "snakemake"), "--snakefile", str(SNAKEFILE), "--directory", str(tmp_path),
           "--configfile", str(REPO / "config/config.yaml"), "-n"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and str(other.parent) in out and f"PYTHONPATH={REPO / 'src'}" in out, out[-2000:]
