"""Content fingerprints that decide what the workflow reruns, computed at parse time.

Snakemake reruns a job when a recorded parameter changes. Two things a job depends on are not
parameters on their own, so they are turned into short digests that are:

- :func:`code_digest`: the code a stage runs, i.e. its script and every module of the library
  that the script imports, directly or through other modules. The digest is taken over the code
  without comments, blank lines and docstrings, so a fresh clone or a ``touch`` (new modification
  times, same code) and an edited comment rerun nothing, while a changed line of code reruns that
  stage and what follows.
- :func:`tree_digest`: the list of image files in a dataset's folders (names, not contents), so
  that adding or removing images reruns the dataset's preparation. Listing names only keeps
  the scan cheap on 100,000-image trees on a network file system; an image replaced in place
  under the same name is not noticed (rerun ``prepare_dataset`` by hand then).

Torch-free and pandas-free: this runs at every parse of the workflow.
"""

from __future__ import annotations

import ast
import hashlib
import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path

from featdyn import FeatdynError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})

def normalised_code(source: str, tree: ast.Module | None = None) -> str:
    """``source`` without blank lines, comments and docstrings, one line per kept line.

    Works on the text, with the syntax tree (``ast``, the same on every Python version) only to
    find docstrings and multi-line strings: a digest of it changes with the code, not with the
    Python that computes it. Comments are dropped where a line starts with ``#`` or, on a line
    without quotes, after a ``#``; a ``#`` on a line with quotes keeps its comment (an edit there
    reruns the stage, the safe side). Lines inside multi-line strings are kept as they are.
    """
    tree = tree or ast.parse(source)
    docstring, literal = set(), set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body:
            first = body[0]
            alone = len(body) == 1 or body[1].lineno > first.end_lineno
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str) and first.lineno > getattr(node, "lineno", 0) and alone):
                docstring.update(range(first.lineno, first.end_lineno + 1))
        elif isinstance(node, (ast.Constant, ast.JoinedStr)) and node.end_lineno > node.lineno:
            literal.update(range(node.lineno + 1, node.end_lineno + 1))
    out = []
    for i, line in enumerate(source.splitlines(), start=1):
        if i in docstring:
            continue
        if i in literal:
            out.append(line)
            continue
        code = line.rstrip()
        if "#" in code and "'" not in code and '"' not in code:
            code = code[:code.index("#")].rstrip()
        if code.strip() and not code.lstrip().startswith("#"):
            out.append(code)
    return "\n".join(out)


def _imported_modules(tree: ast.AST, module: str, package: str) -> set[str]:
    """Dotted names of the ``package`` modules (and the names imported from them) that a module
    imports anywhere (also inside functions and ``if TYPE_CHECKING`` blocks: over-counting only
    costs a rerun, missing one would skip it)."""
    found: set[str] = set()
    parent = module.rsplit(".", 1)[0] if "." in module else module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parent.rsplit(".", node.level - 1)[0] if node.level > 1 else parent
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{a.name}" for a in node.names)
    return {n for n in found if n == package or n.startswith(package + ".")}


def _module_file(package_dir: str, name: str) -> Path | None:
    """The file of dotted module ``name`` in the package at ``package_dir`` (None: not a module,
    e.g. a function imported from a module)."""
    parts = name.split(".")[1:]
    base = Path(package_dir).joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _file_digest_and_imports(path: str, module: str, package: str) -> tuple[str, frozenset[str]]:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise FeatdynError(f"cannot read the code in {path}: {exc}") from exc
    return _cached_digest(path, st.st_mtime_ns, st.st_size, module, package)


@cache
def _cached_digest(path: str, mtime_ns: int, size: int, module: str, package: str) -> tuple[str, frozenset[str]]:
    """(digest of the normalised code, imported package modules) of one file; cached per file
    version (the scripts share most library modules)."""
    try:
        source = Path(path).read_text(encoding="utf-8")
        tree = ast.parse(source, filename=path)
        normal = normalised_code(source, tree)
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        raise FeatdynError(f"cannot read the code in {path}: {exc}") from exc
    return hashlib.sha256(normal.encode()).hexdigest(), frozenset(_imported_modules(tree, module, package))


def code_files(script: str | os.PathLike, package_dir: str | os.PathLike) -> dict[str, Path]:
    """``{module name: file}`` of the library modules that ``script`` runs (transitively), plus
    the script itself under the name ``<script>``."""
    package_dir = Path(package_dir).resolve()
    package = package_dir.name
    files = {"<script>": Path(script)}
    todo = ["<script>"]
    while todo:
        name = todo.pop()
        module = "__script__" if name == "<script>" else name
        _, imports = _file_digest_and_imports(str(files[name]), module, package)
        for imported in imports:
            # `import featdyn.x` also runs featdyn/__init__.py: count every parent package
            parts = imported.split(".")
            for i in range(1, len(parts) + 1):
                dotted = ".".join(parts[:i])
                if dotted in files:
                    continue
                f = _module_file(str(package_dir), dotted)
                if f is not None:
                    files[dotted] = f
                    todo.append(dotted)
    return files


def code_digest(script: str | os.PathLike, package_dir: str | os.PathLike) -> str:
    """A 16-hex-digit digest of the code that ``script`` runs: the script and the modules of the
    package at ``package_dir`` that it imports, transitively (see the module docstring)."""
    package = Path(package_dir).name
    h = hashlib.sha256()
    for name, path in sorted(code_files(script, package_dir).items()):
        module = "__script__" if name == "<script>" else name
        digest, _ = _file_digest_and_imports(str(path), module, package)
        h.update(f"{name}:{digest}\n".encode())
    return h.hexdigest()[:16]


def image_files(root: str | os.PathLike) -> list[str]:
    """Relative paths (``/``-separated, sorted) of the image files under ``root`` at any depth,
    hidden files and folders skipped: the same files the prepare step reads."""
    root = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, root)
        for f in filenames:
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                out.append(f if rel == "." else f"{rel}/{f}".replace(os.sep, "/"))
    return sorted(out)


def tree_digest(roots: Mapping[str, str | os.PathLike]) -> str:
    """A 16-hex-digit digest of the image file names under each of ``roots`` ({role: folder}).
    A missing folder digests as missing (the config check reports it before any job)."""
    h = hashlib.sha256()
    for role, root in sorted(roots.items()):
        h.update(f"[{role}]\n".encode())
        if not Path(root).is_dir():
            h.update(b"<missing>\n")
            continue
        for name in image_files(root):
            h.update(name.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()[:16]


def main(argv: list[str] | None = None) -> None:
    """``python -m featdyn.spec.fingerprints workflow/scripts/<rule>.py ...``: each script's code digest
    and the library modules it tracks (an edit of any of them reruns the rule)."""
    import sys

    package_dir = Path(__file__).resolve().parent
    for script in argv if argv is not None else sys.argv[1:]:
        files = code_files(script, package_dir)
        print(f"{script}: {code_digest(script, package_dir)}")
        for name in sorted(n for n in files if n != "<script>"):
            print(f"  {files[name]}")


if __name__ == "__main__":
    main()
