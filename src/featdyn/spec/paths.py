"""Where every stage's files live: one template each, in Snakemake's wildcard syntax.

The rules (workflow/rules/*.smk) write these patterns out in their ``input:`` and ``output:``
(Snakemake's own style, readable where the rule is); the helpers of workflow/rules/common.smk and
the tools format them from here; tests/test_paths.py checks that every path a rule names is one of
these templates. Logs and benchmarks follow ``results/{logs,benchmarks}/<rule>/...`` by rule.
"""

DATA = "results/data/{dataset}"
MANIFEST = DATA + "/manifest.csv"
CACHE = DATA + "/cache.npy"
DATASET_SUMMARY = DATA + "/dataset.json"
DEMO_IMAGES = DATA + "/images"
RAW = DATA + "/raw"

WEIGHTS = "results/weights/{model}.pt"
# Every training replicate's chain: {rep} is empty for replicate 0 (the paths of a run without
# replicates) and a slash plus rep<r> for replicate r (featdyn.spec.replicates.rep_suffix).
CHECKPOINT = "results/checkpoints/{model}/{dataset}{rep}/epoch_{epoch}.pt"
RESUME_STATE = "results/checkpoints/{model}/{dataset}{rep}/epoch_{epoch}.resume.pt"
EPOCH_METRICS = "results/checkpoints/{model}/{dataset}{rep}/epoch_{epoch}.json"

STORE = "results/activations/{model}/{dataset}{rep}/epoch_{epoch}.zarr"

SOURCE_STATS = "results/stats/{model}/{dataset}{rep}/source.npz"
EPOCH_STATS = "results/stats/{model}/{dataset}{rep}/epoch_{epoch}.npz"
STATS_GROUPS = "results/stats/{model}/{dataset}{rep}/groups/{name}.npz"
FILTER_TABLE = "results/filters/{metric}/{model}/{dataset}{rep}/epoch_{epoch}.csv"
FILTER_GROUPS = "results/filters/{metric}/{model}/{dataset}{rep}/groups/epoch_{epoch}.npz"
# Between replicates a < b at one epoch (the noise floor), and the permutation null of a run.
REPLICATE_STATS = "results/stats/{model}/{dataset}/replicates/{a}-{b}/epoch_{epoch}.npz"
REPLICATE_FILTER_TABLE = "results/filters/{metric}/{model}/{dataset}/replicates/{a}-{b}/epoch_{epoch}.csv"
NULL_STATS = "results/stats/{model}/{dataset}/null.npz"
SCORES = "results/scores/{metric}/{model}/{dataset}.csv"
BOOTSTRAP_REPLICATES = "results/bootstrap/{metric}/{model}/{dataset}.npz"

TABLE = "results/tables/{name}.{ext}"
SUMMARY = "results/summary.md"
REPORT_FINDINGS = "results/report/findings.rst"
SIMILARITY_FIGURE = "results/figures/similarity_{model}.{ext}"
VISUAL_FIGURE = "results/figures/{kind}_{model}_{dataset}.{ext}"
UNITS = "results/figures/units_{model}_{dataset}.csv"
RECIPE_FIGURE = "results/figures/recipes.{ext}"

TEMPLATES = {name: value for name, value in globals().items() if name.isupper() and isinstance(value, str)}
