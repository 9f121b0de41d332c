"""Datasets given as a URL: download, check the sha256, unpack a tar or zip archive.

Every step writes under a temporary name and renames when complete, so an interrupted download
or a failed check never leaves a file or folder that looks finished. ``file://`` URLs work like
any other (the tests use them; a cluster can point at a shared archive).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from featdyn import FeatdynError
from featdyn.atomic import atomic_path
from featdyn.progress import Progress

log = logging.getLogger("featdyn.data.download")

CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(url: str, sha256: str, dest: str | os.PathLike, what: str = "download") -> Path:
    """Stream ``url`` to ``dest``, hashing on the way; keep it only if its sha256 is ``sha256``.

    ``what`` names the config key in messages (``datasets.awa2``).
    """
    dest = Path(dest)
    h = hashlib.sha256()
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(url) as response, open(tmp, "wb") as out:
                size = int(response.headers.get("Content-Length") or 0)
                name = os.path.basename(urllib.parse.urlparse(url).path)
                progress = Progress(log, f"download {name}", max(1, -(-size // CHUNK)), unit="MB", every_s=30.0)
                step = 0
                while block := response.read(CHUNK):
                    out.write(block)
                    h.update(block)
                    step += 1
                    progress.update(step, len(block) / 1e6)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise FeatdynError(f"{what}.url: cannot download {url}: {exc}") from exc
        digest = h.hexdigest()
        if digest != sha256.lower():
            raise FeatdynError(f"{what}.sha256: {url} has sha256 {digest}, expected {sha256}; "
                               f"the download was not kept (check the URL, or the sha256 if the file changed)")
    log.info("downloaded %s -> %s (sha256 %s)", url, dest, digest)
    return dest


def _safe_zip_members(zf: zipfile.ZipFile, archive: Path) -> list[zipfile.ZipInfo]:
    members = zf.infolist()
    for m in members:
        parts = Path(m.filename).parts
        if m.filename.startswith(("/", "\\")) or ".." in parts:
            raise FeatdynError(f"archive {archive}: member {m.filename!r} would unpack outside its folder")
    return members


def unpack(archive: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Unpack a tar (any compression) or zip ``archive`` into the folder ``out_dir`` (atomically)."""
    archive, out_dir = Path(archive), Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        try:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(tmp, members=_safe_zip_members(zf, archive))
            elif tarfile.is_tarfile(archive):
                with tarfile.open(archive) as tf:
                    # The 'data' filter refuses absolute paths, '..', links out of the folder, devices.
                    tf.extractall(tmp, filter="data")
            else:
                raise FeatdynError(f"archive {archive} is neither a tar nor a zip file")
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
            raise FeatdynError(f"cannot unpack {archive}: {exc} (truncated or corrupt archive?)") from exc
    log.info("unpacked %s -> %s", archive, out_dir)
    return out_dir


def fetch_dataset(url: str, sha256: str, out_dir: str | os.PathLike, what: str = "dataset") -> Path:
    """Download ``url``, check its sha256 and unpack it into ``out_dir``; the archive is removed
    afterwards (the unpacked tree is what the prepare step reads)."""
    out_dir = Path(out_dir)
    name = os.path.basename(urllib.parse.urlparse(url).path.rstrip("/")) or "archive"
    archive = out_dir.parent / f".{out_dir.name}.{name}"
    try:
        download(url, sha256, archive, what)
        return unpack(archive, out_dir)
    finally:
        if archive.exists():
            archive.unlink()
