"""What reruns a stage: the code digest follows the code a script runs (not comments, docstrings,
file times or modules it does not import); the tree digest follows the image names of a dataset."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from featdyn.spec.fingerprints import code_digest, code_files, normalised_code, tree_digest

from conftest import REPO, make_tree

CODE = '''
"""Module docstring."""
import os  # a comment

TEMPLATE = """first
# not a comment: part of the string
last"""


def f(x):
    """Docstring."""
    # a comment line

    return x + 1  # trailing


def g(): """kept: it shares its line with the def"""
'''


def test_normalised_code_ignores_comments_blank_lines_and_docstrings():
    same = (CODE.replace("Module docstring.", "Edited.").replace("Docstring.", "Edited.")
            .replace("# a comment line", "# another\n\n# comment").replace("# trailing", "# edited")
            .replace("import os  # a comment", "import os"))
    assert normalised_code(same) == normalised_code(CODE)
    for change in [("x + 1", "x + 2"), ("# not a comment", "# edited in the string"),
                   ("kept: it shares", "edited: it shares"), ("    return", "    y = 0\n    return")]:
        assert normalised_code(CODE.replace(*change)) != normalised_code(CODE), change


def package(tmp: Path) -> tuple[Path, Path]:
    pkg = tmp / "src" / "lib"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("class LibError(Exception):\n    pass\n")
    (pkg / "a.py").write_text("from . import LibError\nfrom .b import helper\n\nVALUE = helper()\n")
    (pkg / "b.py").write_text("def helper():\n    from .c import lazy  # imported inside a function\n    return 1\n")
    (pkg / "c.py").write_text("def lazy():\n    return 2\n")
    (pkg / "unused.py").write_text("X = 1\n")
    script = tmp / "script.py"
    script.write_text(textwrap.dedent("""\
        from lib.a import VALUE
        print(VALUE)
        """))
    return script, pkg


def test_code_digest_follows_the_modules_a_script_imports(tmp_path):
    script, pkg = package(tmp_path)
    assert sorted(code_files(script, pkg)) == ["<script>", "lib", "lib.a", "lib.b", "lib.c"]
    before = code_digest(script, pkg)
    (pkg / "unused.py").write_text("X = 2\n")
    os.utime(pkg / "a.py")
    assert code_digest(script, pkg) == before, "a module not imported, a new file time: same digest"
    (pkg / "c.py").write_text("def lazy():\n    return 3  # now three\n")
    assert code_digest(script, pkg) != before, "a change two imports away changes the digest"


def test_every_workflow_script_has_a_digest_and_imports_featdyn():
    for script in (REPO / "workflow" / "scripts").glob("*.py"):
        files = code_files(script, REPO / "src" / "featdyn")
        assert "featdyn" in files and len(code_digest(script, REPO / "src" / "featdyn")) == 16, script.name


def test_tree_digest_follows_image_names(tmp_path):
    tree = make_tree(tmp_path / "tree", classes=2, per_class=2, size=8)
    before = tree_digest({"root": tree})
    os.utime(tree / "class_0" / "img_000.png")
    (tree / "class_0" / "notes.txt").write_text("not an image")
    (tree / "class_0" / ".hidden.png").write_bytes(b"")
    assert tree_digest({"root": tree}) == before
    (tree / "class_1" / "img_009.png").write_bytes((tree / "class_1" / "img_000.png").read_bytes())
    added = tree_digest({"root": tree})
    assert added != before
    (tree / "class_0" / "img_001.png").unlink()
    assert tree_digest({"root": tree}) not in (before, added)
    (tmp_path / "empty").mkdir()
    assert tree_digest({"root": tmp_path / "nowhere"}) != tree_digest({"root": tmp_path / "empty"})
