"""End to end on real local Spark, Ray and Petastorm: `imbalance run`, reruns, a killed run, spark-submit."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["source", "profile", "split", "protocol", "sample", "materialize", "sample_pretrain",
          "materialize_pretrain", "train", "calibrate", "predict", "evaluate", "seed_spread", "comparison", "report"]
# The demo preset, shrunk so the test takes about a minute: same stages, same two-phase method,
# two training seeds instead of three.
TINY = ["data.rows=2500", "run.seeds=[0, 1]", "train.epochs=1", "train.method_params.pretrain_epochs=1",
        "train.method_params.pretrain={strategy: threshold, cap: 60}", "stream.batch_size=64"]

pytestmark = pytest.mark.slow


def _imbalance(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=kw.pop("cwd", ROOT),
                          capture_output=True, text=True, env=env, timeout=kw.pop("timeout", 900), **kw)


def _markers(run_dir: Path) -> dict:
    return {s: (run_dir / s / "_SUCCESS").read_text() for s in STAGES if (run_dir / s / "_SUCCESS").exists()}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    r = _imbalance(["run", "conf/demo.yaml", f"run.root={root}", *TINY])
    assert r.returncode == 0, r.stderr[-4000:]
    return root, r


def test_demo_runs_every_stage_and_prints_run_dir_last(demo_run):
    root, r = demo_run
    run_dir = Path(r.stdout.strip().splitlines()[-1])
    assert run_dir.parent == root and run_dir.name.startswith("demo-")  # <config stem>-<config hash>
    assert set(_markers(run_dir)) == set(STAGES)
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    for key in ("per_class", "macro", "weighted", "accuracy", "balanced_accuracy", "g_mean", "brier",
                "confusion_matrix", "groups"):
        assert key in metrics, key
    assert len(metrics["confusion_matrix"]) == 103
    assert "adjusted" in metrics                      # demo preset moves thresholds by priors
    assert (run_dir / "report" / "report.html").stat().st_size > 10_000
    # the evaluate stage computed the report's intervals and curves; the report only rendered them
    assert (run_dir / "evaluate" / "report_inputs.json").is_file() and (run_dir / "report" / "intervals.json").is_file()
    assert (run_dir / "profile" / "distribution.json").exists()
    manifest = json.loads((run_dir / "sample_pretrain" / "manifest.json").read_text())
    assert max(manifest["achieved"].values()) <= 60    # thresholded pre-training set
    assert (run_dir / "train" / "pretrain" / "model" / "model.pt").exists()
    assert "macro F1" in r.stdout and "report:" in r.stdout
    # the profile line shows the imbalance the model trains on, with the (balanced) source's beside it
    line = next(x for x in r.stderr.splitlines() if x.startswith("training split after the protocol:"))
    from pipeline.data.schema import read_info

    counts = read_info(run_dir / "protocol" / "train").class_counts.values()
    assert f"rho = {max(counts) / min(counts):.1f}" in line and "(the source: rho = 1.0)" in line, line
    # run.compare_with: baseline trained on the shared split and training set, compared per class
    ref = run_dir / "compare" / "baseline"
    assert (ref / "sample").is_symlink() and (ref / "materialize").is_symlink()
    ref_summary = json.loads((ref / "summary.json").read_text())
    assert {"source", "profile", "split", "protocol", "sample", "materialize"} <= set(ref_summary["skipped"])
    assert "train" in ref_summary["ran"]
    comp = json.loads((run_dir / "comparison" / "comparison.json").read_text())["references"]["baseline"]
    assert len(comp["per_class"]) == 103 and "macro_f1_ci" in comp["delta"]
    test_support = {row["support"] for row in comp["per_class"]}
    assert len(test_support) == 1                      # the balanced test set
    assert "two_phase vs baseline" in (run_dir / "report" / "report.md").read_text()
    assert "two_phase vs baseline: macro F1" in r.stdout
    # two training seeds: each model's second seed is a child run on the same data
    for model_dir in (run_dir, ref):
        seed1 = model_dir / "seeds" / "1"
        assert json.loads((seed1 / "config.json").read_text())["train"]["seed"] == 1
        assert (seed1 / "sample").is_symlink() and (seed1 / "materialize").is_symlink()
        assert (seed1 / "evaluate" / "metrics.json").is_file()
    assert (run_dir / "seeds" / "1" / "sample_pretrain").is_symlink()
    assert comp["covers"] == "seeds and test rows" and comp["seeds"] == {"method": 2, "reference": 2}
    assert "intervals cover the training seeds and the test rows" in r.stdout


def _seed_metrics(model_dir: Path) -> list[dict]:
    return [json.loads((d / "evaluate" / "metrics.json").read_text()) for d in (model_dir, model_dir / "seeds" / "1")]


def test_seeds_give_means_spread_and_nested_runs(demo_run):
    """run.seeds: the comparison's point estimates are the means over the seeds, the spread of every
    headline metric reaches spread.json, summary.json, the console, MLflow and the report, and MLflow
    holds one run per model and seed, nested under the main run."""
    import mlflow

    root, r = demo_run
    run_dir = Path(r.stdout.strip().splitlines()[-1])
    ref = run_dir / "compare" / "baseline"
    mine, theirs = _seed_metrics(run_dir), _seed_metrics(ref)
    comp = json.loads((run_dir / "comparison" / "comparison.json").read_text())["references"]["baseline"]
    macro = [m["macro"]["f1"] for m in mine]
    assert comp["method"]["macro_f1"] == pytest.approx(np.mean(macro))
    assert comp["reference"]["macro_f1"] == pytest.approx(np.mean([m["macro"]["f1"] for m in theirs]))
    assert comp["method"]["seed_spread"]["macro_f1"]["sd"] == pytest.approx(np.std(macro, ddof=1))
    row = comp["per_class"][7]
    assert row["f1"] == pytest.approx(np.mean([m["per_class"][7]["f1"] for m in mine]))
    counts = json.loads((run_dir / "sample" / "manifest.json").read_text())["input_counts"]
    assert row["train_rows"] == counts[str(row["label"])]         # the training split's rows of the class
    for c in comp["per_class"]:   # a verdict needs the two-level interval to exclude 0
        lo, hi = c["f1_delta_ci"]
        assert c["verdict"] == ("gained" if lo > 0 else "lost" if hi < 0 else "no clear change")

    spread = json.loads((run_dir / "seed_spread" / "spread.json").read_text())
    assert spread["seeds"] == [0, 1] and spread["per_seed"]["1"]["macro_f1"] == mine[1]["macro"]["f1"]
    assert spread["metrics"]["macro_f1"]["min"] == min(macro) and spread["metrics"]["macro_f1"]["max"] == max(macro)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["seeds"] == spread
    m = spread["metrics"]["macro_f1"]
    assert f"over 2 training seeds (0, 1), mean ± sd [min, max]: macro F1 {m['mean']:.4f} ± {m['sd']:.4f}" in r.stdout
    for block in ("two_phase, training seed 0", "two_phase, training seed 1", "baseline, training seed 0",
                  "baseline, training seed 1"):        # every console block names its model
        assert f"== {block} ==" in r.stdout
    report = (run_dir / "report" / "report.md").read_text()
    assert "## Across training seeds" in report and f"(sd {m['sd']:.3f})" in report
    assert "| class | training rows | test rows |" in report

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    main = client.get_run(summary["mlflow_run_id"])
    assert main.data.metrics["seeds.macro_f1.sd"] == pytest.approx(m["sd"])
    source_rho = json.loads((run_dir / "profile" / "distribution.json").read_text())["rho"]
    assert main.data.metrics["data.rho"] > source_rho and main.data.metrics["data.source_rho"] == pytest.approx(source_rho)
    exp = main.info.experiment_id
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{main.info.run_id}'")
    by_kind = {(c.data.tags.get("kind"), c.data.tags.get("seed")): c for c in children}
    assert set(by_kind) == {("seed", "1"), ("reference", None)}
    grand = client.search_runs([exp], f"tags.mlflow.parentRunId = '{by_kind[('reference', None)].info.run_id}'")
    assert [(g.data.tags["kind"], g.data.tags["seed"]) for g in grand] == [("seed", "1")]
    assert by_kind[("seed", "1")].data.metrics["test.macro_f1"] == pytest.approx(mine[1]["macro"]["f1"])


def test_one_l5_by_training_rows_in_every_output(demo_run):
    """On the demo's balanced test set every class has the same support, so L5 must come from the
    training rows (Lee et al.), and the console, summary.json, metrics.json, MLflow and the report
    must all show that same L5."""
    import mlflow

    root, r = demo_run
    run_dir = Path(r.stdout.strip().splitlines()[-1])
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    counts = {int(k): v for k, v in json.loads((run_dir / "sample" / "manifest.json").read_text())["input_counts"].items()}
    largest = sorted(counts, key=lambda c: (-counts[c], c))[:5]
    groups = metrics["groups"]
    assert groups["basis"] == "training" and groups["L5"]["classes"] == largest
    f1 = {row["label"]: row["f1"] for row in metrics["per_class"]}
    l5 = sum(f1[c] for c in largest) / 5
    assert groups["L5"]["f1"] == pytest.approx(l5)
    assert metrics["adjusted"]["groups"]["L5"]["classes"] == largest
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["metrics"]["l5_f1"] == pytest.approx(l5)
    assert f"L5 F1 {l5:.4f}" in r.stdout
    run = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db").get_run(summary["mlflow_run_id"])
    assert run.data.metrics["test.l5_f1"] == pytest.approx(l5)
    report = (run_dir / "report" / "report.md").read_text()
    line = next(x for x in report.splitlines() if "F1 of the 5 largest classes (L5, by training rows)" in x)
    assert f"{l5:.3f}" in line
    ref = json.loads((run_dir / "compare" / "baseline" / "evaluate" / "metrics.json").read_text())
    assert ref["groups"]["L5"]["classes"] == largest     # the reference is grouped by the same training rows


def _weights_digest(model_dir: Path) -> str:
    import hashlib

    import torch

    state = torch.load(model_dir / "model.pt", weights_only=True)
    return hashlib.sha256(b"".join(k.encode() + state[k].numpy().tobytes() for k in sorted(state))).hexdigest()


def test_demo_twice_gives_identical_weights_and_metrics(demo_run, tmp_path):
    """Same training config and seed, fresh run root: two Ray workers with two reader threads each and
    two-phase learning train to the same bits, so every metric is the same. (The second run trains the
    method's first seed only, to keep the suite short: the reference and the other seed train by the
    same code, and the first run's two seeds must differ.)"""
    root, r = demo_run
    first = Path(r.stdout.strip().splitlines()[-1])
    again = _imbalance(["run", "conf/demo.yaml", f"run.root={tmp_path}", *TINY, "run.seeds=[0]",
                        "run.compare_with=null"])
    assert again.returncode == 0, again.stderr[-4000:]
    second = Path(again.stdout.strip().splitlines()[-1])
    for model in ("train/pretrain/model", "train/model"):
        assert _weights_digest(first / model) == _weights_digest(second / model), model
    assert _weights_digest(first / "train/model") != _weights_digest(first / "seeds/1/train/model")
    a, b = (json.loads((d / "evaluate/metrics.json").read_text()) for d in (first, second))
    assert a == b


def test_rerun_recomputes_nothing(demo_run):
    root, _ = demo_run
    run_dir = next(root.glob("demo-*"))
    before = _markers(run_dir)
    mtimes = {p: p.stat().st_mtime for p in (run_dir / "evaluate").iterdir()}
    r = _imbalance(["run", "conf/demo.yaml", f"run.root={root}", *TINY])
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["ran"] == [] and set(summary["skipped"]) == set(STAGES)
    assert _markers(run_dir) == before
    assert {p: p.stat().st_mtime for p in (run_dir / "evaluate").iterdir()} == mtimes


def test_changed_config_redoes_only_downstream(demo_run):
    root, _ = demo_run
    run_dir = next(root.glob("demo-*"))
    # a changed value gets its own run id; naming the run (run.id) redoes it in place
    r = _imbalance(["run", "conf/demo.yaml", f"run.root={root}", *TINY, "evaluate.threshold_moving=null",
                    f"run.id={run_dir.name}"])
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["ran"] == ["evaluate", "seed_spread", "comparison", "report"]   # and the reference re-evaluates too
    assert "adjusted" not in json.loads((run_dir / "evaluate" / "metrics.json").read_text())


def test_killed_run_resumes_with_correct_outputs(tmp_path):
    root = tmp_path / "runs"
    args = [sys.executable, "-m", "pipeline.cli", "run", "conf/tabular.yaml", f"run.root={root}",
            "data.rows=3000", "train.epochs=2"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    from pipeline.config import load_config
    run_dir = root / load_config(ROOT / "conf" / "tabular.yaml", args[5:]).run.id
    deadline = time.time() + 600
    try:
        # kill the whole process group (driver, Spark JVM, Ray) once training has started
        while time.time() < deadline and not (run_dir / "materialize" / "_SUCCESS").exists():
            time.sleep(0.5)
            assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(4)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (run_dir / "train" / "_SUCCESS").exists()
    assert not (run_dir / "evaluate").exists()
    r = _imbalance(["run", "conf/tabular.yaml", f"run.root={root}", "data.rows=3000", "train.epochs=2"])
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"source", "profile", "split", "sample", "materialize"} <= set(summary["skipped"])
    assert {"train", "predict", "evaluate", "report"} <= set(summary["ran"])
    train = json.loads((run_dir / "train" / "train_summary.json").read_text())
    assert train["epochs_run"] == 2
    preds = __import__("pyarrow.parquet", fromlist=["x"]).read_table(run_dir / "predict" / "test")
    split = json.loads((run_dir / "split" / "split.json").read_text())
    assert preds.num_rows == sum(split["counts"]["test"].values())
    assert len(set(preds.column("id").to_pylist())) == preds.num_rows


def test_bad_config_key_exit_2_one_line(tmp_path):
    r = _imbalance(["run", "conf/demo.yaml", f"run.root={tmp_path}", "train.epochz=3"])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["imbalance run: error: unknown config key 'train.epochz' "
                                             "— did you mean 'train.epochs'?"]
    assert not any(tmp_path.iterdir())


def test_spark_submit_profile_local(tmp_path):
    import pyspark

    from pipeline.config import SparkSection  # noqa: F401  (the job imports the package)

    src = tmp_path / "src"
    r = _imbalance(["synth", "--preset", "tabular", "--rows", "500", "--seed", "1", "--out", str(src)])
    assert r.returncode == 0, r.stderr[-3000:]
    submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    r = subprocess.run([str(submit), "--master", "local[2]", str(ROOT / "jobs" / "profile.py"),
                        "--input", str(src), "--out", str(tmp_path / "prof")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    dist = json.loads((tmp_path / "prof" / "distribution.json").read_text())
    assert dist["n_rows"] == 500 and dist["n_classes"] == 10
    r = subprocess.run([str(submit), "--master", "local[1]", str(ROOT / "jobs" / "profile.py"),
                        "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "p2")],
                       capture_output=True, text=True, env=env, timeout=600)
    # spark-submit's PythonRunner merges the Python driver's stderr into its stdout
    assert r.returncode == 2 and "imbalance profile: error: input not found" in r.stdout + r.stderr
