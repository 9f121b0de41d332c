from pathlib import Path

from featdyn.data.datasets import SplitSpec, prepare
from featdyn.progress import job_setup

log = job_setup(snakemake.log[0], name="prepare_dataset")
p = snakemake.params
spec = SplitSpec(test_fraction=p.split["test_fraction"], split_seed=p.split["seed"],
                 probe_per_class=p.probe["per_class"], probe_seed=p.probe["seed"],
                 n_classes=p.classes, class_seed=p.class_seed)
roots = p.roots
prepare(roots.get("root") or roots["train"], Path(snakemake.output.manifest).parent, p.image_size, spec,
        test_root=roots.get("test"), threads=snakemake.threads, name=snakemake.wildcards.dataset)
