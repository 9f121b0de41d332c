"""Reading layers on the right axes: what the canonical layout costs.

One command (CPU; GPU with --device cuda):
    tools/with_tcmalloc.sh .venv/bin/python benchmarks/bench_layouts.py

Part 1, capture: featdyn's capture of a ViT-B/16 token layer (encoder.layers.encoder_layer_5,
(N, 197, 768) -> patch grid (N, 768, 14, 14) + class token (N, 768, 1)) and a ConvNeXt-T stage
(features.3, channels-first) and a ConvNeXt block's channels-last inside (features.3.0.block.3,
(N, 28, 28, 768) -> channels-first), at 224 px: `LayerCapture(host=True, transform=arrange)`, as
extraction runs it, against a plain forward hook that clones the output as it is, in the same run,
alternately (median of --repeats). Random initialisation (the cost does not depend on the weights).

Part 2, statistics: the float64 statistics (featdyn.engine.stats.Accumulator, X and Y, on --device) of the
ViT layer's 196 patch tokens per image (its stored grid) against a CNN map of the same
observations x channels ((N, 768, 14, 14), random), and the `tokens: mean` reading (one row per
image).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from featdyn.engine.stats import Accumulator  # noqa: E402
from featdyn.nets.layers import LayerCapture  # noqa: E402
from featdyn.nets.layouts import arrange, model_layouts  # noqa: E402
from featdyn.nets.models import construct  # noqa: E402

CASES = [("vit_b_16", "encoder.layers.encoder_layer_5"), ("convnext_tiny", "features.3"),
         ("convnext_tiny", "features.3.0.block.3")]


def plain_hook(model, layer, x):
    seen = []
    h = model.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.append(o.detach().to("cpu").clone()))
    with torch.inference_mode():
        model(x)
    h.remove()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return seen[0]


def featdyn_capture(model, layer, x, record):
    with LayerCapture(model, [layer], host=True, transform=lambda spec, t: arrange(t, record)) as cap:
        with torch.inference_mode():
            out = cap.run(x)
    if cap.ready is not None:
        cap.ready.synchronize()
    return out


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    dev = torch.device(args.device)
    print(f"device {dev}, batch {args.batch}, 224 px, threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.1f}")
    print("\nPart 1: capture (featdyn, canonical layout) against a plain hooked forward, same run")
    for arch, layer in CASES:
        torch.manual_seed(0)
        model = construct(arch).eval().to(dev)
        record = model_layouts(model, [layer], 224)[layer]
        x = torch.randn(args.batch, 3, 224, 224, device=dev)
        plain_hook(model, layer, x)  # warm-up
        featdyn_capture(model, layer, x, record)
        ratios, plain, ours = [], [], []
        for _ in range(args.repeats):
            a = timed(lambda: plain_hook(model, layer, x))
            b = timed(lambda: featdyn_capture(model, layer, x, record))
            plain.append(a)
            ours.append(b)
            ratios.append(b / a)
        print(f"  {arch} {layer} ({record['layout']}, captured {tuple(record['captured'])}): plain "
              f"{statistics.median(plain):.3f} s, featdyn {statistics.median(ours):.3f} s, ratio "
              f"{statistics.median(ratios):.3f}")
    print("\nPart 2: float64 statistics, a 197-token layer (its 14 x 14 patch grid) against a CNN map of the "
          "same observations x channels")
    torch.manual_seed(0)
    model = construct("vit_b_16").eval().to(dev)
    layer = "encoder.layers.encoder_layer_5"
    record = model_layouts(model, [layer], 224)[layer]
    x = torch.randn(args.batch, 3, 224, 224, device=dev)
    # the statistics run where the score jobs run them: on the device (the capture lands on the host)
    grid = featdyn_capture(model, layer, x, record)[layer].to(dev)
    grid2 = grid + 0.1 * torch.randn_like(grid)
    cnn, cnn2 = torch.randn_like(grid).relu(), torch.randn_like(grid).relu()
    mean, mean2 = grid.double().mean((2, 3)), grid2.double().mean((2, 3))

    def stats(a, b):
        acc = Accumulator(dev)
        acc.update(a, b)
        out = acc.pair()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out

    stats(grid, grid2)
    ratios, t_tok, t_cnn, t_mean = [], [], [], []
    for _ in range(args.repeats):
        a = timed(lambda: stats(cnn, cnn2))
        b = timed(lambda: stats(grid, grid2))
        c = timed(lambda: stats(mean, mean2))
        t_cnn.append(a)
        t_tok.append(b)
        t_mean.append(c)
        ratios.append(b / a)
    print(f"  {tuple(grid.shape)} -> {grid.shape[0] * 196} x {grid.shape[1]}: CNN map {statistics.median(t_cnn):.3f} s, "
          f"token grid {statistics.median(t_tok):.3f} s, ratio {statistics.median(ratios):.3f}; "
          f"tokens: mean ({grid.shape[0]} x {grid.shape[1]}) {statistics.median(t_mean):.4f} s")


if __name__ == "__main__":
    main()
