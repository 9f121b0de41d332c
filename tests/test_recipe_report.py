"""Recipes side by side on constructed tables: the recipe table's numbers, and the summary's two
recipe statements, which hold and fail as the numbers say; the recipe names and groups; the config
check of the recipe options."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from featdyn import FeatdynError
from featdyn.engine.bootstrap import Replicates
from featdyn.report.findings import FAILS, HOLDS, UNCHECKED
from featdyn.report.recipes import AVERAGE, check_preserving, check_proportional, recipe_layout, recipe_table
from featdyn.spec.config import check, with_defaults
from featdyn.spec.hyperparams import training_config
from featdyn.spec.recipe_names import recipe_groups, recipe_label
from featdyn.spec.recipes import check_recipes, reads_reference

LAYERS = ["l1", "l2"]


def scores_and_reps(models: dict[str, tuple[float, float]], rng_seed=0, spread=0.01, b=200):
    """Scores at epochs 0..2 (last epoch values given per model) and replicates around them; the
    replicates share their resample noise across models (the same images on one dataset)."""
    rng = np.random.default_rng(rng_seed)
    noise = rng.normal(0, spread, size=(b, len(LAYERS), 3))
    rows, reps = [], {}
    for model, last in models.items():
        values = np.array([[0.0, v / 2, v] for v in last])  # (L, E)
        for i, layer in enumerate(LAYERS):
            for e in range(3):
                rows.append({"model": model, "dataset": "d", "metric": "procrustes", "kind": "procrustes",
                             "granularity": "layer", "layer": layer, "layer_index": i, "epoch": e,
                             "value": values[i, e]})
        reps[("procrustes", model, "d")] = Replicates(values[None] + noise, LAYERS, [0, 1, 2], 0.95)
    return pd.DataFrame(rows), reps


def accuracy(acc: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame([{"model": m, "dataset": "d", "epoch": e, "train_acc": 90.0, "test_acc": a - 2 + e}
                         for m, a in acc.items() for e in range(3)])


def table(distances, acc, labels):
    scores, reps = scores_and_reps(distances)
    return recipe_table(accuracy(acc), scores, reps, {"resnet50": list(distances)},
                        {m: {"d": labels[m]} for m in distances}, ["procrustes"])


def test_the_recipe_table_pairs_each_recipe_with_full_fine_tuning():
    t = table({"full": (0.2, 0.4), "lpft": (0.1, 0.3)}, {"full": 80.0, "lpft": 82.0},
              {"full": "full", "lpft": "LP-FT (1 probe)"})
    avg = t[t["layer"] == AVERAGE].set_index("model")
    assert avg.loc["full", "distance"] == pytest.approx(0.3) and avg.loc["lpft", "distance"] == pytest.approx(0.2)
    assert avg.loc["lpft", "diff_full"] == pytest.approx(-0.1) and np.isnan(avg.loc["full", "diff_full"])
    # paired replicates: the shared noise cancels, the difference's interval is tight around -0.1
    assert avg.loc["lpft", "diff_low"] == pytest.approx(-0.1) and avg.loc["lpft", "diff_high"] == pytest.approx(-0.1)
    assert avg.loc["full", "ci_low"] < 0.3 < avg.loc["full", "ci_high"]
    assert avg.loc["lpft", "test_acc"] == 82.0 and set(avg["epoch"]) == {2}
    layer = t[(t["model"] == "lpft") & (t["layer"] == "l2")].iloc[0]
    assert layer["distance"] == pytest.approx(0.3) and layer["diff_full"] == pytest.approx(-0.1)
    layout = recipe_layout(t, "resnet50", "d", "procrustes")
    assert list(layout.columns[:4]) == ["recipe", "test acc (%)", "distance (layer average)", "minus full"]
    assert layout.loc["lpft", "minus full"].startswith("-0.100")


def verdicts(finding):
    return [c.verdict for c in finding.cases]


def test_the_preserving_statement_holds_and_fails_as_the_numbers_say():
    labels = {"full": "full", "lpft": "LP-FT (1 probe)", "frozen": "linear probe", "decay": "layer-wise decay 0.8"}
    held = check_preserving(table({"full": (0.2, 0.4), "lpft": (0.1, 0.3), "frozen": (0.0, 0.1),
                                   "decay": (0.5, 0.5)}, dict.fromkeys(labels, 80.0), labels))
    assert verdicts(held) == [HOLDS, HOLDS] and held.verdict == HOLDS, "decay is neither LP-FT nor freezing"
    assert "test accuracy 80.00% against 80.00% (+0.00 points)" in held.cases[0].evidence
    failed = check_preserving(table({"full": (0.2, 0.4), "lpft": (0.3, 0.4)}, {"full": 80.0, "lpft": 85.0},
                                    {"full": "full", "lpft": "LP-FT (1 probe)"}))
    assert failed.verdict == FAILS and "+5.00 points" in failed.cases[0].evidence
    # a difference inside its interval does not count (independent noise: no pairing)
    scores, reps = scores_and_reps({"full": (0.2, 0.4), "lpft": (0.199, 0.399)}, spread=0.0)
    reps[("procrustes", "lpft", "d")].values += np.random.default_rng(1).normal(0, 0.05, (200, 2, 3))
    t = recipe_table(accuracy({"full": 80, "lpft": 80}), scores, reps, {"resnet50": ["full", "lpft"]},
                     {"full": {"d": "full"}, "lpft": {"d": "LP-FT (1 probe)"}}, ["procrustes"])
    assert check_preserving(t).verdict == FAILS
    alone = check_preserving(table({"a": (0.1, 0.1), "b": (0.2, 0.2)}, {"a": 1, "b": 1},
                                   {"a": "linear probe", "b": "LP-FT (1 probe)"}))
    assert alone.verdict == UNCHECKED


def test_the_proportional_statement_says_in_what_it_beats_uniform_fine_tuning():
    labels = {"full": "full", "prop": "distance-proportional (from full)"}

    def case(prop_distances, prop_acc):
        f = check_proportional(table({"full": (0.2, 0.4), "prop": prop_distances}, {"full": 80.0, "prop": prop_acc},
                                     labels))
        return f.verdict, f.cases[0].evidence

    assert case((0.1, 0.2), 81.0)[0] == HOLDS and "in both accuracy and distance" in case((0.1, 0.2), 81.0)[1]
    assert "in distance only" in case((0.1, 0.2), 80.0)[1]
    assert "in accuracy only" in case((0.2, 0.4), 90.0)[1] and case((0.2, 0.4), 90.0)[0] == HOLDS
    verdict, evidence = case((0.3, 0.5), 79.0)
    assert verdict == FAILS and "in neither accuracy nor distance" in evidence
    none = check_proportional(table({"full": (0.2, 0.4), "lpft": (0.1, 0.3)}, {"full": 1, "lpft": 1},
                                    {"full": "full", "lpft": "LP-FT (1 probe)"}))
    assert none.verdict == UNCHECKED and "no distance-proportional" in none.note


def test_recipe_names_and_groups():
    base = training_config({"models": {"m": {"arch": "resnet50"}}, "datasets": {"d": {}}}, "m", "d")
    assert recipe_label(base) == "full"
    assert recipe_label(base | {"freeze": "backbone"}) == "linear probe"
    assert recipe_label(base | {"probe_epochs": 1}) == "LP-FT (1 probe)"
    assert recipe_label(base | {"probe_epochs": 3}) == "linear probe"  # epochs 3: the head alone throughout
    assert recipe_label(base | {"layer_lr": {"decay": 0.7}}) == "layer-wise decay 0.7"
    assert recipe_label(base | {"lr_from": {"model": "x"}}) == "distance-proportional (from x)"
    models = {"a": {"arch": "resnet50"}, "b": {"arch": "resnet50"}, "c": {"arch": "vgg19"},
              "d": {"arch": "resnet50", "width": 0.5}, "e": {"arch": "resnet50", "width": 0.5}}
    assert recipe_groups(models) == {"resnet50": ["a", "b"], "resnet50 x0.5": ["d", "e"]}


def test_bad_recipe_options_are_named_before_any_job_runs(tmp_path):
    (tmp_path / "data/c0").mkdir(parents=True)

    def config(**models):
        return with_defaults({"models": {"ref": {"arch": "mobilenet_v2"}, **models},
                              "datasets": {"d": {"demo": "digits"}},
                              "metrics": {"p": {"kind": "procrustes"}, "f": {"kind": "cka", "granularity": "filter"}},
                              "training": {"epochs": 2}})

    def problems(**models):
        with pytest.raises(FeatdynError) as err:
            check_recipes(config(**models))
        return str(err.value)

    assert "'nope' is no model entry" in problems(x={"arch": "mobilenet_v2", "training": {"lr_from": {"model": "nope"}}})
    assert "same architecture" in problems(x={"arch": "resnet50", "training": {"lr_from": {"model": "ref"}}})
    assert "its own run" in problems(x={"arch": "mobilenet_v2", "training": {"lr_from": {"model": "x"}}})
    assert "cycle" in problems(x={"arch": "mobilenet_v2", "training": {"lr_from": {"model": "y"}}},
                               y={"arch": "mobilenet_v2", "training": {"lr_from": {"model": "x"}}})
    assert "epoch 5 is not an analysed epoch" in problems(
        x={"arch": "mobilenet_v2", "training": {"lr_from": {"model": "ref", "epoch": 5}}})
    assert "'q' is no metric" in problems(x={"arch": "mobilenet_v2", "training": {"lr_from": {"model": "ref",
                                                                                               "metric": "q"}}})
    assert "either layer_lr or lr_from" in problems(
        x={"arch": "mobilenet_v2", "training": {"lr_from": {"model": "ref"}, "layer_lr": {"decay": 0.5}}})
    assert "either decay or multipliers" in problems(x={"arch": "mobilenet_v2",
                                                        "training": {"layer_lr": {"decay": 0.5, "features": 2}}})
    assert "probe_epochs: 3 is beyond epochs=2" in problems(x={"arch": "mobilenet_v2", "training": {"probe_epochs": 3}})
    msg = problems(x={"arch": "mobilenet_v2", "training": {"freeze": ["featurs.0"]}})
    assert "training.freeze (model 'x', dataset 'd'): 'featurs.0' is no module path" in msg and "features" in msg
    assert "training.layer_lr" in problems(x={"arch": "mobilenet_v2", "training": {"layer_lr": {"fc": 2.0}}})
    # through the whole check, beside the other problems
    with pytest.raises(FeatdynError, match="is no model entry"):
        check(config(x={"arch": "mobilenet_v2", "training": {"lr_from": {"model": "nope"}}}), tmp_path)
    ok = config(x={"arch": "mobilenet_v2", "training": {"lr_from": {"model": "ref"}, "probe_epochs": 1}})
    check_recipes(ok)
    t = training_config(ok, "x", "d")
    assert t["lr_from"] == {"model": "ref", "metric": "p", "epoch": "last", "power": 1.0, "floor": 0.01}
    assert [reads_reference(t, e) for e in (0, 1, 2)] == [False, False, True], "LP-FT's probe reads no rates"


@pytest.mark.parametrize("preset", ["recipes.yaml", "recipes_cpu.yaml"])
def test_the_recipe_presets_pass_the_config_check(tmp_path, preset):
    import yaml
    from snakemake.utils import validate
    from test_paper import SCHEMA, tiny_trees

    from conftest import REPO

    cfg = yaml.safe_load((REPO / "config" / preset).read_text())
    validate(copy_of(cfg), SCHEMA)
    cfg = with_defaults(cfg)
    tiny_trees(tmp_path, cfg)
    check(cfg, tmp_path)
    (group,) = recipe_groups(cfg["models"]).values()
    labels = [recipe_label(training_config(cfg, m, next(iter(cfg["datasets"])))) for m in group]
    assert {"full", "linear probe", "layer-wise decay 0.8", "distance-proportional (from full)"} <= set(labels)
    assert any(label.startswith("LP-FT") for label in labels) and len(cfg["datasets"]) == 2


def copy_of(cfg):
    import copy

    return copy.deepcopy(cfg)
