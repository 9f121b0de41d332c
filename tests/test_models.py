"""Models by name, weights through torchvision's cache with the hash check, reduced widths, heads."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import torchvision

from featdyn import FeatdynError
from featdyn.nets.layers import LayerCapture
from featdyn.nets.models import (
    build_model,
    build_source_model,
    cached_weights_path,
    check_arch,
    construct,
    fetch_weights,
    head_path,
    load_pretrained_state,
    resolve_weights,
)
from featdyn.spec.layer_presets import PRESETS

PAPER = [("vgg19", 1 / 16), ("resnet50", 1 / 16), ("densenet121", 1 / 8)]


@pytest.fixture
def no_download(monkeypatch):
    """Any attempt to download weights fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to download: {args[:1]}")
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture
def private_torch_home(tmp_path, monkeypatch, offline_torch_home):
    """A TORCH_HOME of this test's own, holding a copy of the offline MobileNetV2 weights."""
    home = tmp_path / "torch_home"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    for f in (Path(offline_torch_home) / "hub" / "checkpoints").iterdir():
        shutil.copyfile(f, home / "hub" / "checkpoints" / f.name)
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.mark.parametrize("arch, width", PAPER)
def test_reduced_width_keeps_module_paths_and_the_paper_layers(arch, width):
    small = construct(arch, width)
    full = construct(arch, 1.0, meta=True)
    assert [n for n, _ in small.named_modules()] == [n for n, _ in full.named_modules()]
    n_small = sum(p.numel() for p in small.parameters())
    assert n_small < sum(p.numel() for p in full.parameters()) / 20
    with torch.no_grad(), LayerCapture(small.eval(), PRESETS[arch]) as capture:
        feats = capture.run(torch.randn(2, 3, 32, 32))
    assert list(feats) == PRESETS[arch] and all(f.shape[0] == 2 for f in feats.values())


def test_unknown_architecture_and_width_are_named():
    with pytest.raises(FeatdynError, match=r"'resnet5O'.*resnet50"):
        check_arch("resnet5O")
    with pytest.raises(FeatdynError, match="width 0.5.*'alexnet'"):
        construct("alexnet", 0.5)
    with pytest.raises(FeatdynError, match="width 1 only"):
        load_pretrained_state("resnet50", "IMAGENET1K_V1", width=0.5)


def test_unknown_weights_name_lists_the_real_ones():
    with pytest.raises(FeatdynError, match=r"'IMAGENET9K'.*'vgg19'.*IMAGENET1K_V1"):
        resolve_weights("vgg19", "IMAGENET9K")
    assert resolve_weights("resnet50", "DEFAULT").name == "IMAGENET1K_V2"


def test_torchvision_weights_load_from_the_cache_with_their_hash_checked(private_torch_home, no_download):
    enum = resolve_weights("mobilenet_v2", "IMAGENET1K_V1")
    path = cached_weights_path(enum)
    if not path.is_file():
        pytest.skip("the offline MobileNetV2 weights package is not installed")
    assert Path(os.environ["TORCH_HOME"]) in path.parents
    state = load_pretrained_state("mobilenet_v2", "IMAGENET1K_V1")
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(state)  # the real ImageNet weights, strictly
    assert state["classifier.1.weight"].shape == (1000, 1280)


def test_corrupted_cached_weights_fail_their_hash_check_by_name(private_torch_home, no_download):
    enum = resolve_weights("vgg19", "IMAGENET1K_V1")
    path = cached_weights_path(enum)  # vgg19-dcbb9e9d.pth in the private cache: no download
    path.write_bytes(b"PK\x03\x04 a corrupted or partial file")
    with pytest.raises(FeatdynError, match=r"vgg19-dcbb9e9d.pth fails its hash check.*prefix dcbb9e9d"):
        load_pretrained_state("vgg19", "IMAGENET1K_V1")
    with pytest.raises(FeatdynError, match="hash check"):
        fetch_weights("vgg19", "IMAGENET1K_V1", private_torch_home / "out.pt")
    assert not (private_torch_home / "out.pt").exists()


def test_local_weights_file_is_loaded_and_checked(tmp_path):
    model = construct("resnet50", 1 / 16)
    torch.save(model.state_dict(), tmp_path / "mine.pth")
    fetch_weights("resnet50", str(tmp_path / "mine.pth"), tmp_path / "w.pt", width=1 / 16)
    saved = torch.load(tmp_path / "w.pt", weights_only=True)
    assert saved["arch"] == "resnet50" and saved["width"] == 1 / 16
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in model.state_dict().items())
    with pytest.raises(FeatdynError, match=r"mine.pth does not fit model 'densenet121'"):
        fetch_weights("densenet121", str(tmp_path / "mine.pth"), tmp_path / "d.pt", width=1 / 8)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(FeatdynError, match="cannot read weights file .*junk.pt"):
        fetch_weights("resnet50", str(tmp_path / "junk.pt"), tmp_path / "j.pt")
    with pytest.raises(FeatdynError, match="missing.pt does not exist"):
        load_pretrained_state("resnet50", str(tmp_path / "missing.pt"))
    assert not (tmp_path / "d.pt").exists() and not (tmp_path / "j.pt").exists()


@pytest.mark.parametrize("arch, width", PAPER + [("mobilenet_v2", 0.25)])
def test_source_model_keeps_the_backbone_and_gets_a_seeded_new_head(tmp_path, arch, width):
    fetch_weights(arch, None, tmp_path / "w.pt", seed=3, width=width)
    backbone = torch.load(tmp_path / "w.pt", weights_only=True)["state_dict"]
    a = build_source_model(arch, tmp_path / "w.pt", num_classes=7, seed=1, width=width)
    b = build_source_model(arch, tmp_path / "w.pt", num_classes=7, seed=1, width=width)
    c = build_source_model(arch, tmp_path / "w.pt", num_classes=7, seed=2, width=width)
    head = head_path(a)
    assert {"vgg19": "classifier.6", "resnet50": "fc", "densenet121": "classifier",
            "mobilenet_v2": "classifier.1"}[arch] == head
    assert a.get_submodule(head).out_features == 7
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    for k, v in backbone.items():
        if not k.startswith(head + "."):
            assert torch.equal(sa[k], v), k  # the pretrained layers are untouched
    assert all(torch.equal(sa[k], sb[k]) for k in sa), "same seed, same head"
    assert not torch.equal(sa[head + ".weight"], sc[head + ".weight"])
    assert not any(t.is_meta for t in a.state_dict().values())
    rebuilt = build_model(arch, 7, width, state=sa)
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in sa.items())


def test_source_weights_of_another_model_or_width_are_refused(tmp_path):
    fetch_weights("resnet50", None, tmp_path / "w.pt", width=1 / 16)
    with pytest.raises(FeatdynError, match=r"w.pt holds model 'resnet50', expected 'vgg19'"):
        build_source_model("vgg19", tmp_path / "w.pt", 3, 0, 1 / 16)
    with pytest.raises(FeatdynError, match=r"w.pt is of width 0.0625, expected 0.125"):
        build_source_model("resnet50", tmp_path / "w.pt", 3, 0, 1 / 8)


def test_head_is_the_last_layer_of_any_torchvision_classifier():
    expected = {"alexnet": "classifier.6", "efficientnet_b0": "classifier.1", "squeezenet1_0": "classifier.1",
                "vit_b_16": "heads.head", "convnext_tiny": "classifier.2", "swin_t": "head"}
    assert {arch: head_path(construct(arch, meta=True)) for arch in expected} == expected
    squeeze = build_model("squeezenet1_0", 5)  # a 1x1 convolution as the head
    assert squeeze(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_config_check_names_a_bad_width():
    from featdyn.spec.config import check

    def cfg(**model):
        return {"models": {"m": {"arch": "resnet50", "layers": "preset"} | model},
                "datasets": {"d": {"demo": "digits"}}, "metrics": {"p": {"kind": "procrustes"}}}

    check(cfg(width=0.25, weights=None))
    with pytest.raises(FeatdynError, match=r"models.m.width: torchvision's IMAGENET1K_V1 weights exist for width 1"):
        check(cfg(width=0.25))
    with pytest.raises(FeatdynError, match=r"models.m.width: .*'alexnet'"):
        check(cfg(arch="alexnet", width=0.5, weights=None, layers=["features.1"]))


def test_a_failed_download_is_named(private_torch_home, monkeypatch):
    def offline(url, dst, *args, **kwargs):
        raise OSError("network is unreachable")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(FeatdynError, match=r"cannot fetch weights densenet121.IMAGENET1K_V1 from https://.*unreachable"):
        load_pretrained_state("densenet121", "IMAGENET1K_V1")


FETCH_TIMM = """
import sys, torch
from featdyn import FeatdynError
from featdyn.nets.models import fetch_weights
try:
    fetch_weights(sys.argv[1], sys.argv[2], sys.argv[3])
except FeatdynError as exc:
    print("FeatdynError:", exc)
    sys.exit(3)
"""


def test_a_timm_pretrained_tag_comes_through_timms_cache_offline(tmp_path):
    """`weights: <tag>` of a timm model is read through timm's own cache (the Hugging Face hub's), as
    torchvision's names come through torch.hub's: a cache filled beforehand (here by hand, in the
    hub's layout, with a seeded state) is read with the hub offline; an empty cache gives a message
    naming the weights and what to do. Each case runs in a fresh process, as the fetch_weights job
    does (the hub reads HF_HOME and HF_HUB_OFFLINE when it is imported)."""
    import subprocess
    import sys

    from safetensors.torch import save_file
    timm = pytest.importorskip("timm")

    arch, tag = "timm/vit_tiny_patch16_224", "augreg_in21k_ft_in1k"
    torch.manual_seed(1)
    state = {k: v.contiguous() for k, v in timm.create_model(arch[5:], pretrained=False).state_dict().items()}
    repo = tmp_path / "hf" / "hub" / f"models--timm--{arch[5:]}.{tag}"
    commit = "0" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"), metadata={"format": "pt"})
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)

    def fetch(home):
        env = os.environ | {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
        return subprocess.run([sys.executable, "-c", FETCH_TIMM, arch, tag, str(tmp_path / "w.pt")],
                              env=env, capture_output=True, text=True, timeout=300)

    proc = fetch(tmp_path / "hf")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    saved = torch.load(tmp_path / "w.pt", weights_only=True)
    assert (saved["arch"], saved["weights"]) == (arch, tag)
    assert saved["state_dict"].keys() == state.keys()
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in state.items()), "the cached weights, unchanged"
    (tmp_path / "w.pt").unlink()
    proc = fetch(tmp_path / "empty")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"cannot fetch timm weights {arch[5:]}.{tag}" in proc.stdout
    assert "fetch_weights" in proc.stdout and "HF_HOME" in proc.stdout
    assert not (tmp_path / "w.pt").exists()
    with pytest.raises(FeatdynError, match=r"unknown timm pretrained tag 'in1k'.*augreg_in21k_ft_in1k"):
        resolve_weights(arch, "in1k")
