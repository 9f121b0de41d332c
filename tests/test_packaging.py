"""Dependencies are pinned in one place; the conda env carries the same pins."""

import re

import yaml

from conftest import REPO


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


def test_every_rule_has_a_log_and_a_conda_env():
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        for rule in re.split(r"\n(?=rule |localrule )", text)[1:]:
            name = rule.split()[1].rstrip(":")
            assert "\n    log:" in rule, f"{smk.name}: rule {name} has no log:"
            assert "\n    conda:" in rule, f"{smk.name}: rule {name} has no conda:"
