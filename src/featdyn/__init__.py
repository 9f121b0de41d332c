"""featdyn: how a pretrained CNN's internal features change while it is fine-tuned.

The library is plain Python over arrays and paths; the Snakemake workflow in ``workflow/`` is
thin glue around it. Nothing in here imports Snakemake.
"""

__version__ = "0.2.0"


class FeatdynError(Exception):
    """A problem with the user's input (config, dataset, checkpoint, store), stated plainly."""
