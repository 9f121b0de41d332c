"""The columns of the tables that pass from one stage to the next.

A leaf module (it imports nothing): the stages that write these tables (featdyn.engine) and those
that read them (featdyn.report) both import it, and neither then tracks the other's code (a change
to how Table 2 is formatted must not rerun the statistics).
"""

# One row per (layer, epoch) of one metric: the score files (results/scores/<metric>/...).
SCORE_COLUMNS = ["model", "dataset", "metric", "kind", "granularity", "layer", "layer_index", "epoch", "value",
                 "ci_low", "ci_high"]

# One row per (layer, class, filter) of one epoch: the class mean of the filter's map distance
# over the class's valid images, how many images that is, and how many were skipped as dead.
FILTER_COLUMNS = ["model", "dataset", "metric", "kind", "layer", "layer_index", "epoch", "class", "filter",
                  "value", "images", "skipped"]
