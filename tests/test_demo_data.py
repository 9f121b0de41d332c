"""The demo datasets are real images from installed packages, written as class-per-folder trees."""

import numpy as np
from PIL import Image

from featdyn.data.datasets import scan_tree
from featdyn.data.demo_data import materialise


def test_textures_and_digits_trees(tmp_path):
    counts = materialise("textures", tmp_path / "tex")
    assert counts == {"brick": 64, "grass": 64, "gravel": 64}
    tree = scan_tree(tmp_path / "tex")
    img = np.asarray(Image.open(tree["brick"][0]))
    assert img.shape == (64, 64, 3) and img.std() > 5, "a real photo tile, not a flat image"
    counts = materialise("digits", tmp_path / "dig", per_class=5, seed=1)
    assert counts == {str(d): 5 for d in range(10)}
    again = materialise("digits", tmp_path / "dig2", per_class=5, seed=1)
    a = np.asarray(Image.open(sorted((tmp_path / "dig" / "7").iterdir())[0]))
    b = np.asarray(Image.open(sorted((tmp_path / "dig2" / "7").iterdir())[0]))
    assert again == counts and np.array_equal(a, b), "the digit subset is seeded"
