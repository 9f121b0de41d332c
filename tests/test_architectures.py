"""Every architecture read on the right axes: channels-last maps (Swin), token sequences (ViT).

The key test: a distance in the workflow's score file equals the distance computed here,
independently, from features captured with a plain forward hook and arranged by hand.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from featdyn import FeatdynError

from conftest import make_tree, snakemake
from metric_reference import ref_procrustes, single_thread  # noqa: F401 - an autouse fixture

pytestmark = pytest.mark.workflow

# Small but real, random initialisation, no `layers:` (layers: auto): Swin-T, ConvNeXt-T at a
# quarter and ViT-B/16 at a sixteenth of their width, at 224 px (a torchvision ViT takes exactly the
# image size it was built for). The CNNs without a paper preset run in a second, 64 px run
# (`cnn_run`): they take any image size, and 224 px would only make it slower.
MODELS = {
    "swin": {"arch": "swin_t", "weights": None, "width": 0.25},
    "vit": {"arch": "vit_b_16", "weights": None, "width": 0.0625},
    "convnext": {"arch": "convnext_tiny", "weights": None, "width": 0.25},
    "tvit": {"arch": "timm/vit_tiny_patch16_224", "weights": None},
}
AUTO = {"swin": ["features.1.1", "features.3.1", "features.5.5", "norm"],
        "vit": [f"encoder.layers.encoder_layer_{i}" for i in (2, 5, 8, 11)] + ["encoder.ln"],
        "convnext": ["features.1.2", "features.3.2", "features.5.8", "features.7.2"],
        "tvit": ["blocks.2", "blocks.5", "blocks.8", "blocks.11", "norm"]}


# CNNs without a paper preset, at full width (EfficientNet and RegNet have no width multiplier), 64 px.
CNNS = {
    "resnet": {"arch": "resnet18", "weights": None},
    "effnet": {"arch": "efficientnet_b0", "weights": None},
    "regnet": {"arch": "regnet_y_400mf", "weights": None},
}
CNN_AUTO = {"resnet": ["relu", "layer1.1", "layer2.1", "layer3.1", "layer4.1"],
            "effnet": ["features.1.0", "features.2.1", "features.3.1", "features.5.2", "features.8"],
            "regnet": ["stem.2"] + [f"trunk_output.block{b}.block{b}-{i}" for b, i in ((1, 0), (2, 2), (3, 5), (4, 5))]}


def arch_config(tmp, models=MODELS, **over) -> dict:
    make_tree(tmp / "data" / "colours", classes=2, per_class=6, size=20)
    cfg = {
        "seed": 0, "image_size": 224, "device": "cpu", "models": models,
        "datasets": {"colours": {"path": "data/colours"}},
        "split": {"test_fraction": 0.34, "seed": 0}, "probe": {"per_class": 2, "seed": 0},
        "training": {"epochs": 1, "batch_size": 4, "lr": 1e-3},
        "extraction": {"batch_size": 4},
        "bootstrap": {"resamples": 20, "groups": 2},
        "threads": {r: 1 for r in ("prepare_dataset", "finetune_epoch", "extract", "source_stats", "layer_stats",
                                   "filter_scores", "score")},
        "metrics": {"procrustes": {"kind": "procrustes"},
                    "procrustes_cls": {"kind": "procrustes", "tokens": "cls"},
                    "procrustes_mean": {"kind": "procrustes", "tokens": "mean"}},
    }
    cfg.update(over)
    return cfg


@pytest.fixture(scope="session")
def arch_run(tmp_path_factory, offline_torch_home):
    """One complete run (every stage, figures included) of three families and a timm ViT on tiny data."""
    workdir = tmp_path_factory.mktemp("arch_run")
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(arch_config(workdir)))
    snakemake(workdir, "--configfile", str(path), "--cores", "2")
    return workdir


@pytest.fixture(scope="session")
def cnn_run(tmp_path_factory, offline_torch_home):
    """One complete run of the CNNs without a paper preset (ResNet-18, EfficientNet-B0, RegNetY-400MF)
    at 64 px, with no `layers:`. Bootstrap intervals are off here (they are tested with the run
    above): EfficientNet's 1280-channel last layer on 16 observations costs a full SVD per resample."""
    workdir = tmp_path_factory.mktemp("cnn_run")
    path = workdir / "config.yaml"
    cfg = arch_config(workdir, models=CNNS, image_size=64, bootstrap={"resamples": 0},
                      metrics={"procrustes": {"kind": "procrustes"}})
    path.write_text(yaml.safe_dump(cfg))
    snakemake(workdir, "--configfile", str(path), "--cores", "2")
    return workdir


def hooked(workdir, model: str, epoch: int, layer: str) -> np.ndarray:
    """The layer's output for the probe images, from a plain forward hook (no featdyn capture)."""
    from featdyn.data.datasets import ImageCache
    from featdyn.nets.batches import Normalizer
    from featdyn.nets.checkpoints import load_checkpoint, model_from_checkpoint
    from featdyn.spec.hyperparams import IMAGENET_MEAN, IMAGENET_STD

    ckpt = load_checkpoint(workdir / f"results/checkpoints/{model}/colours/epoch_{epoch}.pt")
    net = model_from_checkpoint(ckpt).eval()
    cache = ImageCache(workdir / "results/data/colours")
    x = Normalizer(IMAGENET_MEAN, IMAGENET_STD, channels_last=False)(
        torch.as_tensor(np.asarray(cache.images[cache.indices("probe")])))
    seen = []
    handle = net.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    with torch.no_grad():
        net(x)
    handle.remove()
    return seen[0].numpy().astype(np.float64)


def source_scores(workdir, metric: str, model: str) -> pd.DataFrame:
    """The score file's distances to the source model (not the permutation null's rows)."""
    df = pd.read_csv(workdir / f"results/scores/{metric}/{model}/colours.csv")
    return df[df["comparison"] == "source"]


def score(workdir, metric: str, model: str, layer: str, epoch: int = 1) -> float:
    df = source_scores(workdir, metric, model)
    return float(df[(df["layer"] == layer) & (df["epoch"] == epoch)]["value"].iloc[0])


def test_channels_last_swin_is_scored_over_its_channels(arch_run):
    """Swin's stages are (N, H, W, C): observations are (image, y, x), features the last axis."""
    for layer in AUTO["swin"][:2]:
        a, b = hooked(arch_run, "swin", 0, layer), hooked(arch_run, "swin", 1, layer)
        assert a.ndim == 4 and a.shape[1] == a.shape[2], "Swin's stage output is (N, H, W, C)"
        want = ref_procrustes(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]))
        assert score(arch_run, "procrustes", "swin", layer) == pytest.approx(want, rel=1e-6, abs=1e-9)
        # the old reading (channels = image rows) gives another number: the test can fail
        wrong = ref_procrustes(a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1]),
                               b.transpose(0, 2, 3, 1).reshape(-1, b.shape[1]))
        assert abs(wrong - want) > 1e-3


def test_vit_token_layers_patches_cls_and_mean(arch_run):
    """A ViT layer is (N, 197, C): the patch tokens are the observations, the class token is
    excluded; `tokens: cls` reads the class token alone, `tokens: mean` the mean patch token."""
    for layer in AUTO["vit"][-2:]:
        a, b = hooked(arch_run, "vit", 0, layer), hooked(arch_run, "vit", 1, layer)
        assert a.shape[1:] == (197, 48)
        c = a.shape[-1]
        patches = ref_procrustes(a[:, 1:].reshape(-1, c), b[:, 1:].reshape(-1, c))
        assert score(arch_run, "procrustes", "vit", layer) == pytest.approx(patches, rel=1e-6, abs=1e-9)
        cls = ref_procrustes(a[:, 0], b[:, 0])
        assert score(arch_run, "procrustes_cls", "vit", layer) == pytest.approx(cls, rel=1e-6, abs=1e-9)
        mean = ref_procrustes(a[:, 1:].mean(1), b[:, 1:].mean(1))
        assert score(arch_run, "procrustes_mean", "vit", layer) == pytest.approx(mean, rel=1e-6, abs=1e-9)
        with_cls = ref_procrustes(a.reshape(-1, c), b.reshape(-1, c))
        assert abs(with_cls - patches) > 1e-6, "the class token must make a difference here"
    # a timm ViT (random initialisation, nothing downloads): the same reading
    a, b = hooked(arch_run, "tvit", 0, "norm"), hooked(arch_run, "tvit", 1, "norm")
    assert a.shape[1:] == (197, 192)
    want = ref_procrustes(a[:, 1:].reshape(-1, 192), b[:, 1:].reshape(-1, 192))
    assert score(arch_run, "procrustes", "tvit", "norm") == pytest.approx(want, rel=1e-6, abs=1e-9)
    # tokens: on a model without token layers reads its maps as they are
    for layer in AUTO["swin"]:
        assert score(arch_run, "procrustes_cls", "swin", layer) == score(arch_run, "procrustes", "swin", layer)
    # bootstrap intervals resample images (2 groups here), never tokens: intervals exist
    scores = source_scores(arch_run, "procrustes_cls", "vit")
    assert scores[scores["epoch"] == 1][["ci_low", "ci_high"]].notna().all().all()
    # the permutation null of a class-token reading is that reading's (tests/test_token_floor.py)
    null = pd.read_csv(arch_run / "results/scores/procrustes_cls/vit/colours.csv")
    null = null[(null["comparison"] == "permutation") & (null["layer"] == "encoder.ln")]
    assert len(null) and scores["null"].notna().all()
    assert (scores[scores["layer"] == "encoder.ln"]["null"] == null["value"].mean()).all()


def test_store_records_layouts(arch_run):
    from featdyn.data.stores import ActivationStore

    store = ActivationStore(arch_run / "results/activations/vit/colours/epoch_0.zarr")
    rec = store.layout("encoder.ln")
    assert (rec["layout"], rec["prefix"], rec["grid"], rec["by"]) == ("NTC", 1, [14, 14], "rule")
    assert store.array("encoder.ln").shape == (4, 48, 14, 14)
    assert store.array("encoder.ln__prefix").shape == (4, 48, 1)
    swin = ActivationStore(arch_run / "results/activations/swin/colours/epoch_0.zarr")
    assert swin.layout("features.1.1")["layout"] == "NHWC" and swin.array("features.1.1").shape == (4, 24, 56, 56)
    convnext = ActivationStore(arch_run / "results/activations/convnext/colours/epoch_0.zarr")
    assert convnext.layout("features.1.2")["layout"] == "NCHW"


def test_every_family_end_to_end_with_layers_auto(arch_run):
    """layers: auto, every stage, the figures: token patches for ViT, measured fields for Swin,
    exact ones (through ConvNeXt's permutes and channel norms) for ConvNeXt."""
    for model, layers in AUTO.items():
        scores = source_scores(arch_run, "procrustes", model)
        assert list(dict.fromkeys(scores["layer"])) == layers, model
        assert scores["value"].notna().all() and (scores[scores["epoch"] == 0]["value"].abs() < 1e-9).all()
        units = pd.read_csv(arch_run / f"results/figures/units_{model}_colours.csv")
        want = {"vit": "token patch", "tvit": "token patch", "swin": "measured"}.get(model, "exact")
        assert set(units["field"]) == {want}, (model, set(units["field"]))
        for kind in ("patches", "heatmaps"):
            assert (arch_run / f"results/figures/{kind}_{model}_colours.png").stat().st_size > 10_000
    log = (arch_run / "results/layers_auto.json").read_text()
    assert "swin_t|0.25|224" in log and "encoder.ln" in log
    assert (arch_run / "results/tables/table2_reusability.csv").exists()


def test_ambiguous_layer_is_refused_before_any_job(tmp_path):
    """MaxViT's partition attention runs on (windows, tokens, channels): no rule decides it."""
    cfg = arch_config(tmp_path, models={"m": {"arch": "maxvit_t", "weights": None,
                                              "layers": ["blocks.0.layers.0.layers.window_attention.attn_layer"]}})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "--configfile", str(tmp_path / "c.yaml"), "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "models.m.layers" in out and "window_attention.attn_layer" in out and "output shape" in out
    assert "layout" in out and not (tmp_path / "results").exists()


def test_layout_override_decides_what_no_rule_can():
    from featdyn.nets.layouts import arrange, decide, model_layouts

    class Tokens(torch.nn.Module):  # (N, 1 + 4 x 4, 8): no ViT, no rule
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 4, stride=4)
            self.out = torch.nn.Identity()

        def forward(self, x):
            t = self.conv(x).flatten(2).transpose(1, 2)
            return self.out(torch.cat([t.mean(1, keepdim=True), t], 1))

    net = Tokens()
    with pytest.raises(FeatdynError, match=r"layer 'out' \(output shape \(17, 8\) per image\).*layout"):
        model_layouts(net, ["out"], 16)
    rec = model_layouts(net, ["out"], 16, {"out": "NTC:1"})["out"]
    assert (rec["layout"], rec["prefix"], rec["grid"], rec["by"]) == ("NTC", 1, [4, 4], "config")
    x = torch.randn(2, 17, 8)
    parts = arrange(x, rec)
    assert torch.equal(parts[""][:, :, 1, 2], x[:, 1 + 1 * 4 + 2]) and torch.equal(parts["__prefix"][:, :, 0], x[:, 0])
    with pytest.raises(FeatdynError, match="not a square grid"):
        decide(net, "out", (18, 8), 16, "NTC:1")
    with pytest.raises(FeatdynError, match="needs a 4-D output"):
        decide(net, "out", (17, 8), 16, "NHWC")


def test_cnns_without_a_preset_end_to_end_with_layers_auto(cnn_run):
    """ResNet-18, EfficientNet-B0 and RegNetY-400MF with no `layers:`: the stage outputs chosen on
    the meta device, every stage run, exact fields (squeeze-excitation included) in the figures, and
    a score equal to Procrustes on plain forward-hook features (channels-first: observations are
    (image, y, x))."""
    log = (cnn_run / "results/layers_auto.json").read_text()
    for model, layers in CNN_AUTO.items():
        assert f"{CNNS[model]['arch']}|1.0|64|" in log, model
        scores = source_scores(cnn_run, "procrustes", model)
        assert list(dict.fromkeys(scores["layer"])) == layers, model
        assert scores["value"].notna().all() and (scores[scores["epoch"] == 0]["value"].abs() < 1e-9).all()
        assert scores["ci_low"].isna().all(), "bootstrap intervals are off in this run"
        for layer in (layers[1], layers[-1]):
            a, b = hooked(cnn_run, model, 0, layer), hooked(cnn_run, model, 1, layer)
            c = a.shape[1]
            want = ref_procrustes(a.transpose(0, 2, 3, 1).reshape(-1, c), b.transpose(0, 2, 3, 1).reshape(-1, c))
            assert score(cnn_run, "procrustes", model, layer) == pytest.approx(want, rel=1e-6, abs=1e-9), (model, layer)
        units = pd.read_csv(cnn_run / f"results/figures/units_{model}_colours.csv")
        assert set(units["field"]) == {"exact"}, (model, set(units["field"]))
        for kind in ("patches", "heatmaps"):
            assert (cnn_run / f"results/figures/{kind}_{model}_colours.png").stat().st_size > 10_000
        assert (cnn_run / f"results/figures/similarity_{model}.png").exists()
    table = pd.read_csv(cnn_run / "results/tables/table2_reusability.csv")
    assert set(CNNS) <= set(table["model"]), table["model"].unique()
