"""The experiment harness on real data (sklearn digits, step imbalance): trials, resume, statistics."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.experiment import run_experiment

pytestmark = pytest.mark.slow


def test_digits_grid_runs_resumes_and_reports(spark, ray_local, tmp_path):
    cfg = load_config("conf/exp-digits-tiny.yaml", [f"experiment.out={tmp_path / 'exp'}", "train.epochs=1"])
    out = run_experiment(cfg)
    trials = pd.read_csv(f"{out}/results.csv")
    assert len(trials) == 4 and set(trials["method"]) == {"baseline", "ros"}
    assert trials["macro_f1"].between(0, 1).all() and trials["macro_roc_auc"].between(0, 1).all()
    stats = json.loads((tmp_path / "exp" / "stats.json").read_text())
    assert "macro_f1" in json.dumps(stats)
    assert (tmp_path / "exp" / "report.html").stat().st_size > 5000
    # every trial is a full run with its own metrics; ROS balanced the imbalanced training split
    run_dir = trials.loc[trials["method"] == "ros", "run_dir"].iloc[0]
    manifest = json.loads(open(f"{run_dir}/sample/manifest.json").read())
    assert len(set(manifest["achieved"].values())) == 1
    split = json.loads(open(f"{run_dir}/split/split.json").read())
    test_counts = list(split["counts"]["test"].values())
    assert max(test_counts) - min(test_counts) <= 10          # the digits test set stays balanced

    # rerun: every trial is found finished, nothing recomputed
    run_experiment(cfg)
    for rd in trials["run_dir"]:
        assert json.loads(open(f"{rd}/summary.json").read())["ran"] == []


def test_bad_experiment_config_is_one_clear_error(tmp_path):
    cfg = load_config("conf/exp-digits-tiny.yaml", [f"experiment.out={tmp_path}",
                                                    "experiment.methods=[{name: x, overrides: {train.epochz: 1}}]"])
    with pytest.raises(ConfigError, match="train.epochz"):
        run_experiment(cfg)
