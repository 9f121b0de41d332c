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
CHECKPOINT = "results/checkpoints/{model}/{dataset}/epoch_{epoch}.pt"
RESUME_STATE = "results/checkpoints/{model}/{dataset}/epoch_{epoch}.resume.pt"
EPOCH_METRICS = "results/checkpoints/{model}/{dataset}/epoch_{epoch}.json"

STORE = "results/activations/{model}/{dataset}/epoch_{epoch}.zarr"

SOURCE_STATS = "results/stats/{model}/{dataset}/source.npz"
EPOCH_STATS = "results/stats/{model}/{dataset}/epoch_{epoch}.npz"
STATS_GROUPS = "results/stats/{model}/{dataset}/groups/{name}.npz"
FILTER_TABLE = "results/filters/{metric}/{model}/{dataset}/epoch_{epoch}.csv"
FILTER_GROUPS = "results/filters/{metric}/{model}/{dataset}/groups/epoch_{epoch}.npz"
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
