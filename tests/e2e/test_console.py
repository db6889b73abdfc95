"""What a user sees: `imbalance run conf/tabular.yaml` with its output piped (not a terminal).

One small real run (Spark, Ray Train with 2 workers, Petastorm): the console keeps the stage lines
and one line per epoch, Ray's own chatter goes to the run's ``train/ray-workers.log``, no progress
bar control characters, and the files say what their numbers mean.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 2
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tabular_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("IMBALANCE_PROGRESS_BARS", None)
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "conf/tabular.yaml", f"run.root={root}",
                        "data.rows=1500", f"train.epochs={EPOCHS}", "train.num_workers=2"],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return Path(r.stdout.strip().splitlines()[-1]), r


def test_ray_internals_stay_off_the_console_and_epoch_lines_remain(tabular_run):
    run_dir, r = tabular_run
    epoch_lines = [ln for ln in r.stderr.splitlines() if re.match(rf"epoch \d/{EPOCHS}: loss ", ln)]
    assert [ln.split()[1].rstrip(":") for ln in epoch_lines] == [f"{k}/{EPOCHS}" for k in range(1, EPOCHS + 1)], r.stderr
    for noise in ("(pid=", " pid=", "PlacementGroupCleaner", "TrainController", "Setting up process group"):
        assert noise not in r.stderr and noise not in r.stdout, f"{noise!r} reached the console:\n{r.stderr}"
    for garbage in ("\r", "\x1b["):                                  # no redrawn bars, no colour codes
        assert garbage not in r.stderr and garbage not in r.stdout, repr(garbage)
    log = (run_dir / "train" / "ray-workers.log").read_text()        # Ray's lines are kept, in the run
    assert "TrainController pid=" in log and "RayTrainWorker pid=" in log


def test_best_epoch_matches_the_logged_epoch(tabular_run):
    run_dir, r = tabular_run
    summary = json.loads((run_dir / "train" / "train_summary.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == list(range(1, EPOCHS + 1))
    best = summary["best_epoch"]
    assert 1 <= best <= EPOCHS and summary["best_metrics"]["epoch"] == best
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith(f"epoch {best}/{EPOCHS}: "))
    assert f"val macro-F1 {summary['best_metrics']['val_macro_f1']:.4f}" in line


def test_metric_names_and_the_minority_rule_are_explained(tabular_run):
    run_dir, r = tabular_run
    m = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert m["mean_recall"] == m["balanced_accuracy"]
    assert m["mean_ovr_balanced_accuracy"] == m["macro"]["balanced_accuracy"]
    assert "docs/metrics.md" in m["field_notes"]["docs"]
    report = (run_dir / "report" / "report.md").read_text()
    assert "balanced accuracy = mean recall" in report and "mean one-vs-rest balanced accuracy" in report
    assert "balanced accuracy (mean recall)" in r.stdout
    assert re.search(r"\d+ minority classes \([^)]*% of the rows\): the smallest classes that together hold "
                     r"at most half of the rows", r.stderr), r.stderr
