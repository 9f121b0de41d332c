"""Nothing half-written may look complete."""

import pytest

from featdyn.atomic import atomic_path, write_text


def test_success_renames_and_failure_leaves_nothing(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    write_text(target, "one")
    assert target.read_text() == "one"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "one", "a failed rewrite must leave the old file"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"], "no temporary left behind"


def test_directories_are_atomic_too(tmp_path):
    target = tmp_path / "store.zarr"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        (tmp / "a").mkdir(parents=True)
        raise RuntimeError("killed")
    assert not target.exists()
    with atomic_path(target) as tmp:
        (tmp / "a").mkdir(parents=True)
    assert (target / "a").is_dir()
    assert list(tmp_path.iterdir()) == [target]
