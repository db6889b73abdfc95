"""The experiment harness on real data (sklearn digits, step imbalance): parallel trials on Ray,
shared data stages, threshold-moving variants, failures recorded, resume, statistics."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.flows.experiment import run_experiment

pytestmark = pytest.mark.slow


def test_digits_grid_runs_in_parallel_resumes_and_reports(spark, ray_local, tmp_path):
    good = [f"experiment.out={tmp_path / 'exp'}", "train.epochs=1"]
    # a method whose trials fail at training (two read rates for ten classes: only the workers, which
    # see the data, can tell; a misspelled key would be refused before any trial starts): recorded,
    # the rest go on
    broken = load_config("conf/exp-digits-tiny.yaml", good + [
        "experiment.methods=[{name: baseline}, {name: ros, overrides: {sample.strategy: ros, "
        "evaluate.threshold_moving: prior}, threshold_variant: ros+tm}, "
        "{name: broken, overrides: {train.read_sampling: {strategy: rates, rates: [1.0, 0.5]}}}]"])
    with pytest.raises(RuntimeError, match="2 of 6 trials failed"):
        run_experiment(broken)
    records = json.loads((tmp_path / "exp" / "trials.json").read_text())
    errors = [r for r in records if "error" in r]
    assert len(errors) == 2 and all("rates" in r["error"] for r in errors)

    cfg = load_config("conf/exp-digits-tiny.yaml", good)
    out = run_experiment(cfg)
    trials = pd.read_csv(f"{out}/results.csv")
    assert len(trials) == 6 and set(trials["method"]) == {"baseline", "ros", "ros+tm"}
    assert trials["macro_f1"].between(0, 1).all() and trials["macro_roc_auc"].between(0, 1).all()
    stats = json.loads((tmp_path / "exp" / "stats.json").read_text())
    assert "macro_f1" in json.dumps(stats)
    assert (tmp_path / "exp" / "report.html").stat().st_size > 5000
    # ROS against the baseline on the level: a two-level interval over both seeds and their test rows;
    # the threshold-moved variant is not in it (its decisions are not stored in the predictions)
    (d,) = stats["two_level_deltas"]
    assert (d["method"], d["reference"], d["seeds"], d["covers"]) == ("ros", "baseline", [0, 1], "seeds and test rows")
    want = [trials[(trials["seed"] == s) & (trials["method"] == "ros")]["macro_f1"].iloc[0]
            - trials[(trials["seed"] == s) & (trials["method"] == "baseline")]["macro_f1"].iloc[0] for s in (0, 1)]
    assert d["macro_f1_delta"] == pytest.approx(sum(want) / 2)
    assert d["macro_f1_delta_ci"][0] <= d["macro_f1_delta_ci"][1]
    assert "Difference to baseline per level (two-level bootstrap)" in (tmp_path / "exp" / "report.md").read_text()
    assert stats["block_cols"][-1] == "seed" and len(stats["block_cols"]) == 2   # blocks: level × seed

    # ros+tm is the ROS model's threshold-moved decisions: same run, same AUC (scores unchanged)
    for seed in (0, 1):
        r = trials[(trials["seed"] == seed) & (trials["method"] == "ros")].iloc[0]
        t = trials[(trials["seed"] == seed) & (trials["method"] == "ros+tm")].iloc[0]
        assert r["run_dir"] == t["run_dir"] and r["macro_roc_auc"] == pytest.approx(t["macro_roc_auc"])
        # every method of one seed read the same shared split
        assert trials[trials["seed"] == seed]["data_dir"].nunique() == 1
    assert trials["data_dir"].nunique() == 2

    # every trial is a full run with its own metrics; ROS balanced the imbalanced training split
    run_dir = trials.loc[trials["method"] == "ros", "run_dir"].iloc[0]
    manifest = json.loads(open(f"{run_dir}/sample/manifest.json").read())
    assert len(set(manifest["achieved"].values())) == 1
    split = json.loads(open(f"{trials['data_dir'].iloc[0]}/split/split.json").read())
    test_counts = list(split["counts"]["test"].values())
    assert max(test_counts) - min(test_counts) <= 10          # the digits test set stays balanced

    # resume: the finished trials of the failed attempt were not rerun after it, nor now
    run_experiment(cfg)
    for rd in trials["run_dir"]:
        assert json.loads(open(f"{rd}/summary.json").read())["ran"] == []


def test_trials_run_in_parallel_on_ray(spark, ray_local, tmp_path):
    """Two trials in flight at once (the Ray cluster has 2 CPUs; in-process training holds 1 each)."""
    cfg = load_config("conf/exp-digits-tiny.yaml", [f"experiment.out={tmp_path / 'exp'}", "train.epochs=1",
                                                    "experiment.seeds=[0]"])
    out = run_experiment(cfg)
    t = pd.read_csv(f"{out}/results.csv").drop_duplicates("run_dir").sort_values("started")
    assert len(t) == 2
    assert t["started"].iloc[1] < t["finished"].iloc[0]          # the second began before the first ended


def test_bad_experiment_config_is_one_clear_error(tmp_path):
    cfg = load_config("conf/exp-digits-tiny.yaml", [f"experiment.out={tmp_path}",
                                                    "experiment.methods=[{name: x, overrides: {train.epochz: 1}}]"])
    with pytest.raises(ConfigError, match="train.epochz"):
        run_experiment(cfg)
    cfg = load_config("conf/exp-digits-tiny.yaml", [
        f"experiment.out={tmp_path}", "experiment.methods=[{name: x, threshold_variant: x+tm}]"])
    with pytest.raises(ConfigError, match="threshold_variant"):
        run_experiment(cfg)
    cfg = load_config("conf/exp-digits-tiny.yaml", [f"experiment.out={tmp_path}", "experiment.parallel=0"])
    with pytest.raises(ConfigError, match="experiment.parallel"):
        run_experiment(cfg)
