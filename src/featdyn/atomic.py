"""Write to a temporary name, then rename: nothing half-written may look complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success rename it onto ``path``.

    Works for files and directories (a Zarr store is a directory). The temporary name sits in
    the same directory so the final rename is atomic on POSIX file systems. On any exception the
    temporary is removed and ``path`` is left as it was (or absent). ``suffix`` keeps an
    extension that a writer insists on (``np.save`` appends ``.npy``).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
        if final.exists():
            _remove(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write a text file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
