"""``layers: auto`` at parse time without torch: the resolved layers are kept in a file of the run.

The main Snakemake process (the config check, which imports torch anyway) resolves every model's
``auto`` layers on the meta device (featdyn.nets.auto_layers) and writes them to
:data:`AUTO_LAYERS_FILE`; each job's re-parse reads them from there. An entry is keyed by the
architecture, width, image size, torchvision's version and a digest of the code that chooses them,
so a stale entry is never used.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import os
from pathlib import Path

AUTO_LAYERS_FILE = "results/layers_auto.json"
_CODE = ("nets/auto_layers.py", "nets/layouts.py")


def _key(arch: str, width: float, image_size: int) -> str:
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256(b"".join((root / p).read_bytes() for p in _CODE)).hexdigest()[:12]
    try:
        tv = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        tv = "?"
    return f"{arch}|{float(width)}|{int(image_size)}|torchvision {tv}|code {digest}"


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def auto_layers_of(arch: str, width: float, image_size: int, path: str | os.PathLike = AUTO_LAYERS_FILE) -> list[str]:
    """The layers ``layers: auto`` takes for ``arch``: from the run's file, or resolved now (torch,
    on the meta device) and added to it."""
    path = Path(path)
    key = _key(arch, width, image_size)
    known = _read(path)
    if key in known:
        return list(known[key])
    # resolved once, in the process that checks the config (it imports torch for that anyway)
    resolver = importlib.import_module("featdyn.nets.auto_layers")
    layers = resolver.arch_auto_layers(arch, image_size, width)
    known = _read(path) | {key: layers}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return list(layers)
