"""Extraction: real torch, real Zarr stores; streaming, eval mode, interruption, bounded memory."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import featdyn.nets.extraction as extraction
from featdyn import FeatdynError
from featdyn.data.datasets import MANIFEST_COLUMNS, ImageCache, write_manifest
from featdyn.data.stores import open_store
from featdyn.nets.checkpoints import save_checkpoint
from featdyn.nets.extraction import capture_batches, extract, load_model
from featdyn.nets.models import build_model
from featdyn.spec.hyperparams import IMAGENET_MEAN, IMAGENET_STD

from conftest import REPO

LAYERS = ["features.0", "features.3", "features.6"]


def make_data(root: Path, probe_per_class: int, size: int = 32, classes: int = 2, seed: int = 0) -> Path:
    """A prepared dataset (manifest + uint8 cache) with ``probe_per_class`` probe images per class,
    interleaved with train images so that the probe rows are not contiguous."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(classes):
        for i in range(2 * probe_per_class):
            split = "test" if i % 2 else "train"
            rows.append((f"img/{c}/{i}.png", c, f"class_{c}", split, split == "test"))
    df = pd.DataFrame(rows, columns=["path", "label", "class", "split", "probe"])
    df.insert(0, "index", np.arange(len(df)))
    root.mkdir(parents=True, exist_ok=True)
    write_manifest(df[MANIFEST_COLUMNS], root / "manifest.csv")
    # Smooth random images (a coarse grid upsampled) plus noise: activations that are not constant.
    coarse = rng.integers(0, 256, size=(len(df), size // 8, size // 8, 3))
    images = np.kron(coarse, np.ones((1, 8, 8, 1))) + rng.normal(0, 20, size=(len(df), size, size, 3))
    np.save(root / "cache.npy", np.clip(images, 0, 255).astype(np.uint8))
    return root


def make_checkpoint(path: Path, cache: ImageCache, arch: str = "mobilenet_v2", seed: int = 0,
                    first_conv_scale: float = 1.0) -> Path:
    torch.manual_seed(seed)
    model = build_model(arch, cache.num_classes)
    for m in model.modules():  # BatchNorm statistics unlike the defaults: eval and train mode differ
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).weight.mul_(first_conv_scale)
    save_checkpoint(path, model, None, {"arch": arch, "num_classes": cache.num_classes, "epoch": 3,
                                        "classes": cache.classes, "config": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}})
    return path


@pytest.fixture
def run(tmp_path):
    cache = ImageCache(make_data(tmp_path / "data", probe_per_class=5))
    return cache, make_checkpoint(tmp_path / "epoch_3.pt", cache)


def direct(checkpoint: Path, cache: ImageCache, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The layers computed by calling the model's submodules by hand, all probe images at once."""
    ckpt = torch.load(checkpoint, weights_only=False)
    model = build_model(ckpt["arch"], ckpt["num_classes"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    x = torch.from_numpy(np.asarray(cache.images[rows])).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return {layer: model.features[: int(layer.split(".")[1]) + 1](x).numpy() for layer in LAYERS}


def no_writer_thread() -> bool:
    return not any(t.name == "store-writer" and t.is_alive() for t in threading.enumerate())


def test_store_holds_the_direct_forward_and_its_provenance(run, tmp_path):
    cache, ckpt = run
    out = tmp_path / "epoch_3.zarr"
    summary = extract(ckpt, cache, LAYERS, out, batch_size=4, device=torch.device("cpu"),
                      attrs={"model": "mnet", "dataset": "toy"})
    rows = cache.indices("probe")
    assert summary["n"] == len(rows) == 10 and summary["images_per_s"] > 0
    store = open_store(out, {"checkpoint_sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
                             "probe_sha256": cache.probe_sha256(), "image_size": 32, "epoch": 3,
                             "dtype": "float32", "layers": LAYERS, "model": "mnet", "arch": "mobilenet_v2"})
    np.testing.assert_array_equal(store.index, rows)
    np.testing.assert_array_equal(store.labels, cache.labels[rows])
    want = direct(ckpt, cache, rows)
    for layer in LAYERS:
        arr = store.array(layer)
        assert arr.chunks[0] == 4 and arr.dtype == np.float32
        # Equal to an eval-mode forward of all images at once: BatchNorm used its running
        # statistics (train mode would normalise each batch of 4 by its own statistics).
        np.testing.assert_allclose(arr[:], want[layer], rtol=1e-5, atol=1e-5, err_msg=layer)
    assert no_writer_thread()


def test_capture_runs_in_eval_mode_without_gradients(run):
    cache, ckpt = run
    model, norm, _ = load_model(ckpt, cache, torch.device("cpu"))
    model.train()
    seen = []
    model.features[1].register_forward_hook(
        lambda mod, _i, out: seen.append((mod.training, torch.is_grad_enabled(), out.requires_grad, out.dtype)))
    rows = cache.indices("probe")
    batches = list(capture_batches(model, norm, cache, rows, LAYERS, 4, torch.device("cpu")))
    assert [b.start for b in batches] == [0, 4, 8] and len(seen) == 3
    assert set(seen) == {(False, False, False, torch.float32)}
    feats = batches[1].numpy()
    assert all(v.dtype == np.float32 and v.flags.c_contiguous and len(v) == 4 for v in feats.values())


def test_layer_errors_stop_before_a_store_exists(run, tmp_path):
    cache, ckpt = run
    out = tmp_path / "bad.zarr"
    with pytest.raises(FeatdynError, match="features.99") as err:
        extract(ckpt, cache, ["features.99"], out, batch_size=4, device=torch.device("cpu"))
    assert "'features.18'" in str(err.value), "the valid choices are listed"
    assert not out.exists() and not list(tmp_path.glob(".bad.zarr.tmp*"))


def test_float16_overflow_in_the_writer_thread_reaches_the_caller(tmp_path):
    cache = ImageCache(make_data(tmp_path / "data", probe_per_class=4))
    ckpt = make_checkpoint(tmp_path / "hot.pt", cache, first_conv_scale=1e5)
    out = tmp_path / "hot.zarr"
    with pytest.raises(FeatdynError, match="outside float16's range"):
        extract(ckpt, cache, ["features.0.0"], out, batch_size=2, dtype="float16", device=torch.device("cpu"))
    assert not out.exists() and not list(tmp_path.glob(".hot.zarr.tmp*")) and no_writer_thread()
    extract(ckpt, cache, ["features.0.0"], out, batch_size=2, dtype="float32", device=torch.device("cpu"))
    assert np.abs(open_store(out).array("features.0.0")[:]).max() > 65504


def test_interrupted_extraction_leaves_nothing_then_reruns(run, tmp_path, monkeypatch):
    cache, ckpt = run
    out = tmp_path / "epoch_3.zarr"
    real = extraction.iterate_batches

    def interrupted(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs)):
            if i == 2:
                raise KeyboardInterrupt  # the job is stopped after two batches were handed to the writer
            yield batch

    monkeypatch.setattr(extraction, "iterate_batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract(ckpt, cache, LAYERS, out, batch_size=4, device=torch.device("cpu"))
    assert not out.exists() and not list(tmp_path.glob(".epoch_3.zarr.tmp*")) and no_writer_thread()
    monkeypatch.setattr(extraction, "iterate_batches", real)
    extract(ckpt, cache, LAYERS, out, batch_size=4, device=torch.device("cpu"))
    assert open_store(out).n == 10


def _python(code: str, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


@pytest.mark.slow
def test_killed_extraction_leaves_no_store_and_reruns(tmp_path):
    """SIGKILL in the middle of writing: nothing at the store's path looks finished; a rerun completes."""
    cache = ImageCache(make_data(tmp_path / "data", probe_per_class=100, size=32))
    ckpt = make_checkpoint(tmp_path / "epoch_3.pt", cache)
    out = tmp_path / "epoch_3.zarr"
    proc = _python("""
        import sys, torch
        from featdyn.data.datasets import ImageCache
        from featdyn.nets.extraction import extract
        torch.set_num_threads(1)
        extract(sys.argv[1], ImageCache(sys.argv[2]), ["features.0", "features.3"], sys.argv[3], batch_size=2,
                device=torch.device("cpu"))
    """, str(ckpt), str(tmp_path / "data"), str(out))
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if any(p.is_file() for t in tmp_path.glob(".epoch_3.zarr.tmp*") for p in (t / "features.0" / "c").rglob("*")):
                break
            time.sleep(0.002)
        assert proc.poll() is None, f"the extraction ended before it could be killed: {proc.communicate()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    stale = list(tmp_path.glob(".epoch_3.zarr.tmp*"))
    assert not out.exists() and len(stale) == 1
    with pytest.raises(FeatdynError, match="interrupted write"):
        open_store(out)
    extract(ckpt, cache, ["features.0", "features.3"], out, batch_size=50, device=torch.device("cpu"))
    assert not stale[0].exists()
    store = open_store(out)
    assert store.n == 200
    want = direct(ckpt, cache, cache.indices("probe")[-6:])
    np.testing.assert_allclose(store.array("features.3")[-6:], want["features.3"], rtol=1e-5, atol=1e-5)


MEMORY_PROBE = """
    import json, sys, threading, time
    import numpy as np, torch
    from featdyn.data.datasets import ImageCache
    from featdyn.nets.extraction import extract
    from featdyn.data.stores import open_store

    def rss_mb():
        # Anonymous resident memory: what the process allocated, without the pages of files it
        # maps (the image cache is a memory map, and reading more images maps more of it).
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) / 1024

    class Peak:
        # The highest anonymous resident set size seen (sampled every millisecond) since the last reset.
        def __init__(self):
            self.value, self.stop = rss_mb(), False
            threading.Thread(target=self.run, daemon=True).start()
        def run(self):
            while not self.stop:
                self.value = max(self.value, rss_mb())
                time.sleep(0.001)
        def growth(self, fn):
            # Peak RSS during fn() above the RSS just before it.
            before = self.value = rss_mb()
            fn()
            time.sleep(0.01)
            return max(self.value, rss_mb()) - before

    ckpt, small, large, out = sys.argv[1:]
    layers = ["features.0", "features.1", "features.3", "features.18"]
    run = lambda data, name: extract(ckpt, ImageCache(data), layers, out + name, batch_size=8,
                                     device=torch.device("cpu"))
    peak = Peak()
    run(small, "/warm-up.zarr")  # first use: thread pools, allocator caches, imports
    growth = {"small": peak.growth(lambda: run(small, "/small.zarr")),
              "large": peak.growth(lambda: run(large, "/large.zarr"))}
    # Positive control: hold every activation of the large run, as an accumulating extraction would.
    held = []
    store = open_store(out + "/large.zarr")
    growth["control"] = peak.growth(lambda: held.extend(np.asarray(store.array(l)[:]) for l in layers))
    growth["held_mb"] = sum(a.nbytes for a in held) / 2**20
    print(json.dumps(growth))
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_probe_images(tmp_path):
    size = 64
    small = make_data(tmp_path / "small", probe_per_class=8, size=size)
    large = make_data(tmp_path / "large", probe_per_class=160, size=size, seed=1)
    ckpt = make_checkpoint(tmp_path / "epoch_3.pt", ImageCache(small))
    proc = _python(MEMORY_PROBE, str(ckpt), str(small), str(large), str(tmp_path))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    growth = json.loads(stdout.strip().splitlines()[-1])
    # 320 images of these layers are ~74 MiB, 16 images ~4 MiB. Streaming holds a few batches of 8
    # (~1.8 MiB each): the large run's peak may exceed the small run's by little, whereas an
    # extraction that kept its activations would add the ~70 MiB difference.
    tolerance = 20.0
    assert growth["held_mb"] > 3 * tolerance, growth
    assert growth["large"] - growth["small"] < tolerance, growth
    assert growth["control"] > 2 * tolerance, f"the measurement cannot see growth: {growth}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_extraction_matches_cpu(run, tmp_path):
    cache, ckpt = run
    extract(ckpt, cache, LAYERS, tmp_path / "cpu.zarr", batch_size=4, device=torch.device("cpu"))
    extract(ckpt, cache, LAYERS, tmp_path / "cuda.zarr", batch_size=4, device=torch.device("cuda"))
    cpu, gpu = open_store(tmp_path / "cpu.zarr"), open_store(tmp_path / "cuda.zarr")
    assert gpu.attrs["device"] == "cuda" and gpu.attrs["tf32"] is False
    for layer in LAYERS:
        np.testing.assert_allclose(gpu.array(layer)[:], cpu.array(layer)[:], rtol=1e-4, atol=1e-4)
