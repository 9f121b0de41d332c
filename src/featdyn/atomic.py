"""Write to a temporary name, then rename: nothing half-written may look complete."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from featdyn import FeatdynError

log = logging.getLogger("featdyn.atomic")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def temporary_name(path: str | os.PathLike, suffix: str = "") -> Path:
    """The temporary sibling :func:`atomic_path` writes ``path`` under: ``.<name>.tmp-<pid>-<random>``."""
    final = Path(path)
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporaries of ``path`` left by a writer that was killed before it could clean up."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.tmp-*")) if path.parent.is_dir() else []


def remove_stale_temporaries(path: str | os.PathLike) -> None:
    """Remove what killed writers of ``path`` left (a VGG19 checkpoint with Adam state is 1.7 GB).
    Only for outputs that one job writes at a time (every workflow output is)."""
    for stale in stale_temporaries(path):
        log.warning("removing %s, left by an interrupted writer of %s", stale, path)
        _remove(stale)


def os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` (itself, or one it was raised from or while handling): torch.save
    reports a full disk as a RuntimeError whose context is the OSError with 'No space left on device'."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def write_error(path: str | os.PathLike, exc: BaseException) -> FeatdynError:
    """A FeatdynError naming the file being written and the cause (errno text, free space left)."""
    cause = os_error_in(exc)
    text = f"{cause.strerror or cause} [errno {cause.errno}]" if cause is not None and cause.errno else str(exc)
    try:
        free = shutil.disk_usage(Path(path).parent).free
        where = f"; {free / 1e6:.1f} MB free on its file system"
    except OSError:
        where = ""
    return FeatdynError(f"cannot write {path}: {text}{where}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success rename it onto ``path``.

    Works for files and directories (a Zarr store is a directory). The temporary name sits in
    the same directory so the final rename is atomic on POSIX file systems. On any exception the
    temporary is removed and ``path`` is left as it was (or absent). ``suffix`` keeps an
    extension that a writer insists on (``np.save`` appends ``.npy``). An OSError while writing
    (a full disk, a read-only folder) becomes a FeatdynError that names ``path`` and the cause.
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(final, exc) from exc
    tmp = temporary_name(final, suffix)
    try:
        yield tmp
        if final.exists():
            _remove(final)
        os.replace(tmp, final)
    except OSError as exc:
        raise write_error(final, exc) from exc
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write a text file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(df, path: str | os.PathLike) -> None:
    """Write a pandas DataFrame to ``path`` as CSV without its index, atomically (pandas is not
    imported here: this module is used by jobs that never need it)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
