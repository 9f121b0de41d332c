"""Per-epoch fine-tuning: tiny VGG19 / ResNet50 / DenseNet121 train, a chain of epoch jobs equals
one uninterrupted loop bit for bit, checkpoints from another run are refused, the data path is exact."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from featdyn import FeatdynError
from featdyn.data.datasets import ImageCache, SplitSpec, prepare
from featdyn.engine.linalg import pick_device
from featdyn.nets.batches import Normalizer, iterate_batches
from featdyn.nets.checkpoints import load_checkpoint, model_from_checkpoint, resume_path, save_checkpoint
from featdyn.nets.models import fetch_weights
from featdyn.nets.training import epoch_order, fine_tune, run_epoch
from featdyn.spec.hyperparams import TrainConfig

from conftest import make_tree

CPU = torch.device("cpu")
PAPER = [("vgg19", 1 / 16), ("resnet50", 1 / 16), ("densenet121", 1 / 8)]
# Every batch has the same shape (18 train, 6 test images, batches of 6): fewer kernel warm-ups.
CFG = dict(epochs=2, batch_size=6, eval_batch_size=6, lr=1e-3)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> ImageCache:
    tmp = tmp_path_factory.mktemp("data")
    make_tree(tmp / "tree", classes=3, per_class=8, size=20)
    prepare(tmp / "tree", tmp / "prepared", 32, SplitSpec(test_fraction=0.25, probe_per_class=2), threads=2)
    return ImageCache(tmp / "prepared")


def scramble_global_rngs(salt: int) -> None:
    torch.manual_seed(1000 + salt)
    np.random.seed(2000 + salt)
    random.seed(3000 + salt)


def chain(tmp, arch, width, cache, cfg, upto):
    """Epoch jobs 0..upto, each from the previous one's checkpoint file, as the workflow runs them."""
    name = arch.replace("/", "_")  # timm/<model>
    weights = tmp / f"{name}.pt"
    if not weights.exists():
        fetch_weights(arch, None, weights, seed=0, width=width)
    rows, previous = [], None
    for epoch in range(upto + 1):
        scramble_global_rngs(epoch)  # each job is a fresh process: nothing may carry over but the checkpoint
        out = tmp / f"{name}_epoch_{epoch}.pt"
        rows.append(run_epoch(epoch, arch, cache, cfg, out, weights_file=weights, previous=previous,
                              device=CPU, width=width))
        previous = out
    return rows, previous


@pytest.mark.slow
@pytest.mark.parametrize("arch, width", PAPER)
def test_tiny_paper_model_trains_and_the_epoch_chain_equals_one_loop(tmp_path, cache, arch, width):
    cfg = TrainConfig(**CFG)
    rows, last = chain(tmp_path, arch, width, cache, cfg, upto=2)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert np.isfinite([r["train_loss"], r["test_loss"]]).all()
        assert 0 <= r["train_acc"] <= 100 and 0 <= r["test_acc"] <= 100
        assert r["setup_s"] >= 0 and r["train_s"] > 0
    ckpt = load_checkpoint(last, arch, cache.num_classes, width)
    assert (ckpt["epoch"], ckpt["seed"], ckpt["classes"]) == (2, 0, cache.classes)
    assert "optimizer" not in ckpt and "lr" in ckpt["config"] and "epochs" not in ckpt["config"]
    state = torch.load(resume_path(last), weights_only=True)
    assert state["optimizer"]["state"] and state["epoch"] == 2, "the Adam moments travel in the resume state"
    assert "lr" not in load_checkpoint(tmp_path / f"{arch}_epoch_0.pt")["config"], "epoch 0 does not depend on lr"
    source = load_checkpoint(tmp_path / f"{arch}_epoch_0.pt")["model"]
    assert any(not torch.equal(source[k], v) for k, v in ckpt["model"].items()), "training moved the weights"

    model, loop_rows = fine_tune(arch, cache, cfg, tmp_path / f"{arch}.pt", device=CPU, width=width)
    chained = ckpt["model"]
    for k, v in model.state_dict().items():
        assert torch.equal(chained[k], v), f"{arch}: {k} differs between the chained and the uninterrupted run"
    for a, b in zip(rows, loop_rows):
        assert (a["train_loss"], a["test_acc"]) == (b["train_loss"], b["test_acc"])



def test_resume_refuses_a_checkpoint_of_another_run(tmp_path, cache):
    arch, width = "resnet50", 1 / 16
    cfg = TrainConfig(**CFG | {"epochs": 1})
    _, epoch0 = chain(tmp_path, arch, width, cache, cfg, upto=0)
    out = tmp_path / "epoch_1.pt"

    def resume(previous=epoch0, **kw):
        args = dict(arch=arch, width=width, cfg=cfg, epoch=1)
        args.update(kw)
        run_epoch(args["epoch"], args["arch"], cache, args["cfg"], out, previous=previous, device=CPU,
                  width=args["width"])

    with pytest.raises(FeatdynError, match=r"resnet50_epoch_0.pt is of model 'resnet50', expected 'vgg19'"):
        resume(arch="vgg19")
    with pytest.raises(FeatdynError, match=r"is of width 0.0625, expected 0.125"):
        resume(width=1 / 8)
    with pytest.raises(FeatdynError, match=r"is epoch 0, expected 1"):
        resume(epoch=2)
    with pytest.raises(FeatdynError, match=r"trained with seed 0, the config says 7"):
        resume(cfg=TrainConfig(**CFG | {"seed": 7}))
    with pytest.raises(FeatdynError, match=r"has 3 classes, expected 5"):
        load_checkpoint(epoch0, arch, 5)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(FeatdynError, match="cannot read checkpoint .*junk.pt"):
        resume(previous=junk)
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    with pytest.raises(FeatdynError, match="foreign.pt is not a featdyn checkpoint"):
        resume(previous=tmp_path / "foreign.pt")
    with pytest.raises(FeatdynError, match="needs the checkpoint of epoch 0"):
        resume(previous=None)
    assert not out.exists(), "a refused resume writes nothing"
    # epoch 1 starts a fresh optimizer: it needs epoch 0's weights only (a new lr keeps epoch 0)
    resume_path(epoch0).unlink()
    run_epoch(1, arch, cache, cfg, out, previous=epoch0, device=CPU, width=width)
    # from epoch 2 on, the optimizer state: another epoch's is refused, a deleted one is named
    out2 = tmp_path / "epoch_2.pt"
    save_checkpoint(tmp_path / "other.pt", model_from_checkpoint(load_checkpoint(out)), None,
                    {"epoch": 0, "seed": 0}, state_path=resume_path(out))
    with pytest.raises(FeatdynError, match=r"belongs to epoch 0 \(seed 0\), not to the checkpoint of epoch 1"):
        run_epoch(2, arch, cache, cfg, out2, previous=out, device=CPU, width=width)
    resume_path(out).unlink()
    with pytest.raises(FeatdynError, match=r"resume state .*epoch_1.resume.pt is missing"):
        run_epoch(2, arch, cache, cfg, out2, previous=out, device=CPU, width=width)
    assert not out2.exists(), "a refused resume writes nothing"


def test_an_interrupted_epoch_leaves_no_checkpoint(tmp_path, cache, monkeypatch):
    import featdyn.nets.checkpoints as checkpoints

    arch, width = "resnet50", 1 / 16
    cfg = TrainConfig(**CFG | {"epochs": 1})
    _, epoch0 = chain(tmp_path, arch, width, cache, cfg, upto=0)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.torch, "save", killed)  # killed while writing the checkpoint
    with pytest.raises(KeyboardInterrupt):
        run_epoch(1, arch, cache, cfg, tmp_path / "epoch_1.pt", previous=epoch0, device=CPU, width=width)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet50.pt", "resnet50_epoch_0.pt",
                                                          "resnet50_epoch_0.resume.pt"]


def test_bf16_and_channels_last_switches_run_on_cpu(tmp_path, cache):
    """The CUDA speed path (bf16 autocast, channels-last), forced on, on the CPU."""
    arch, width = "resnet50", 1 / 16
    cfg = TrainConfig(**CFG | {"epochs": 1, "bf16": True, "channels_last": True})
    rows, last = chain(tmp_path, arch, width, cache, cfg, upto=1)
    assert np.isfinite(rows[-1]["train_loss"]) and 0 <= rows[-1]["test_acc"] <= 100
    model = model_from_checkpoint(load_checkpoint(last))
    assert not any(t.is_meta for t in model.state_dict().values())
    auto = TrainConfig(**CFG)
    assert (auto.bf16, auto.channels_last) == ("auto", "auto")


@pytest.fixture(scope="module")
def cache224(tmp_path_factory) -> ImageCache:
    """A torchvision ViT takes exactly the image size it was built for (a timm ViT by default too)."""
    tmp = tmp_path_factory.mktemp("data224")
    make_tree(tmp / "tree", classes=2, per_class=4, size=20)
    prepare(tmp / "tree", tmp / "prepared", 224, SplitSpec(test_fraction=0.25, probe_per_class=1), threads=2)
    return ImageCache(tmp / "prepared")


# Every family beyond the paper's CNNs: its head replaced, a training epoch in bf16 autocast with a
# channels-last model, on the CPU (the CUDA speed path, forced on). Widths as the architecture run.
FAMILIES = [("swin_t", 0.25, 32), ("convnext_tiny", 0.25, 32), ("efficientnet_b0", 1.0, 32),
            ("regnet_y_400mf", 1.0, 32), ("vit_b_16", 1 / 16, 224), ("timm/vit_tiny_patch16_224", 1.0, 224)]


@pytest.mark.slow
@pytest.mark.parametrize("arch, width, size", FAMILIES, ids=[a.replace("/", "_") for a, _, _ in FAMILIES])
def test_every_family_fine_tunes_in_bf16_and_channels_last(tmp_path, cache, cache224, monkeypatch, arch, width,
                                                           size):
    from featdyn.nets import training
    from featdyn.nets.models import head_path

    data = cache if size == 32 else cache224
    dtypes, layouts = [], []
    logits = training._logits
    monkeypatch.setattr(training, "_logits", lambda out: dtypes.append(logits(out).dtype) or logits(out))
    place = training._place

    def placed(model, device, cfg):
        model = place(model, device, cfg)
        convs = [p for p in model.parameters() if p.ndim == 4 and p.shape[-1] > 1]
        layouts.append(all(p.is_contiguous(memory_format=torch.channels_last) for p in convs) if convs else None)
        return model

    monkeypatch.setattr(training, "_place", placed)
    cfg = TrainConfig(**CFG | {"epochs": 1, "batch_size": 3, "eval_batch_size": 3, "bf16": True,
                               "channels_last": True})
    rows, last = chain(tmp_path, arch, width, data, cfg, upto=1)
    assert np.isfinite(rows[-1]["train_loss"]) and 0 <= rows[-1]["test_acc"] <= 100
    assert dtypes and set(dtypes) == {torch.bfloat16}, "every forward pass ran under bf16 autocast"
    assert layouts and all(layouts), "the model was placed channels-last"
    tuned = model_from_checkpoint(load_checkpoint(last))
    source = model_from_checkpoint(load_checkpoint(last.with_name(last.name.replace("_1.pt", "_0.pt"))))
    head = head_path(tuned)
    assert tuned.get_submodule(head).weight.shape[0] == data.num_classes
    assert tuned.get_submodule(head).weight.dtype == torch.float32, "weights stay float32 under autocast"
    changed = [k for k, v in tuned.state_dict().items() if v.is_floating_point()
               and not torch.equal(v, source.state_dict()[k])]
    assert any(not k.startswith(head + ".") for k in changed), "the backbone was fine-tuned, not only the head"


def test_batches_come_exactly_from_the_cache_in_the_asked_order(cache):
    rows = np.random.default_rng(0).permutation(len(cache.labels))
    batches = list(iterate_batches(cache, rows, 5, CPU, workers=3, ahead=4))
    assert [len(y) for _, y in batches] == [5, 5, 5, 5, 4]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.dtype == torch.uint8 and y.dtype == torch.int64
    np.testing.assert_array_equal(x.numpy(), cache.images[rows])
    np.testing.assert_array_equal(y.numpy(), cache.labels[rows])


def test_normalizer_matches_the_torchvision_transform(cache):
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = torch.from_numpy(np.array(cache.images[:4]))
    reference = (x.permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    for channels_last in (False, True):
        out = Normalizer(mean, std, channels_last)(x)
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
        assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_epoch_order_depends_on_seed_and_epoch_only():
    a = epoch_order(100, 0, 3)
    assert sorted(a) == list(range(100))
    assert np.array_equal(a, epoch_order(100, 0, 3))
    assert not np.array_equal(a, epoch_order(100, 0, 4))
    assert not np.array_equal(a, epoch_order(100, 1, 3))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_cuda_without_a_gpu_is_named():
    with pytest.raises(FeatdynError, match="device: 'cuda' requested"):
        pick_device("cuda")
    assert pick_device("auto") == CPU
