"""The similarity-curve figure is drawn from a tidy score table."""

import pandas as pd
from PIL import Image

from featdyn.figures import similarity_curves


def test_similarity_curves_png(tmp_path):
    rows = [dict(model="m", dataset=d, metric=k, kind=k, granularity="layer", layer=f"l{i}", layer_index=i,
                 epoch=e, value=0.1 * e * (i + 1))
            for d in ("a", "b") for k in ("procrustes", "pwsm") for i in range(3) for e in range(4)]
    out = tmp_path / "fig.png"
    similarity_curves(pd.DataFrame(rows), "m", out)
    with Image.open(out) as im:
        assert im.width > 2 * im.height > 300, "one panel per metric, side by side"
