"""A misspelled value fails in seconds, as one stderr line with exit status 2, before any stage
runs or anything is written; a failed run leaves a finished run's config.json alone; an
InputError raised inside a Ray Train worker reaches the user the same way, not retried."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

BAD = [
    "train.loss=focl",
    "train.method=two_phse",
    "model.name=mpl",
    "train.optimizer=adm",
    "sample.strategy=rsu",
    "train.read_sampling={strategy: ross}",
    "evaluate.threshold_moving=prio",
    "model.depth=19",
    "train.loss_params={gama: 2}",
    "train.loss_params={gamma: -1}",
    "train.amp_dtype=fp32",
    "model.name=resnet",                       # a resnet on tabular features
    "sample.strategy=rus",                     # (with the next) a bad target
    "stream.reader=petastorn",
    "train.select_metric=macro_f2",
    "train.method_params={dynamic_sampling: maybe}",
    "run.compare_with=basline",
    "evaluate.alert_fractions=[0.001, 2]",
]


def _imbalance(args, timeout=600):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("bad", BAD)
def test_a_misspelled_value_is_one_line_exit_2_and_writes_nothing(tmp_path, bad):
    root = tmp_path / "runs"
    extra = ["sample.target=autoo"] if bad == "sample.strategy=rus" else []
    t0 = time.time()
    r = _imbalance(["run", "conf/tabular.yaml", f"run.root={root}", bad, *extra], timeout=60)
    took = time.time() - t0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (bad, r.stderr[-2000:])
    assert len(lines) == 1, (bad, lines)
    assert lines[0].startswith("imbalance run: error:")
    assert not root.exists() or not list(root.rglob("_SUCCESS")), bad
    assert not root.exists(), f"{bad}: wrote {list(root.rglob('*'))}"
    assert took < 30, f"{bad}: {took:.1f}s"


IMAGE_BAD = ["data.resize=pda", "data.mode=LL", "data.size=0", "data.label_from=manfest", "data.label_from=manifest",
             "data.images=/no/such/tree"]


@pytest.mark.parametrize("bad", IMAGE_BAD)
def test_a_bad_image_option_fails_before_ingest(tmp_path, bad):
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    root = tmp_path / "runs"
    r = _imbalance(["run", "conf/images.yaml", f"run.root={root}", f"data.images={tree}", bad], timeout=60)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (bad, r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("imbalance run: error:"), (bad, lines)
    assert bad.split("=")[0] in lines[0] or "data.images" in lines[0], (bad, lines[0])
    assert not root.exists(), f"{bad}: wrote {list(root.rglob('*'))}"


def test_the_image_preset_without_images_names_the_key(tmp_path):
    """conf/images.yaml is for the user's own images: without data.images it must not fall back to
    synthetic data (its data.synth_preset is null)."""
    root = tmp_path / "runs"
    r = _imbalance(["run", "conf/images.yaml", f"run.root={root}"], timeout=60)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("imbalance run: error: config key 'data.images'"), lines
    assert not root.exists()


def test_a_failed_run_leaves_a_finished_runs_config_alone(tmp_path):
    """A finished run (here: its record and one stage marker) and a rerun of the same id that
    fails on a missing input: the finished run's config.json is untouched."""
    root = tmp_path / "runs"
    run = root / "mine"
    (run / "profile").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"finished": True}))
    (run / "profile" / "_SUCCESS").write_text("x")
    r = _imbalance(["run", "conf/tabular.yaml", f"run.root={root}", "run.id=mine",
                    f"data.input={tmp_path / 'no-such-table'}"], timeout=60)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "data.input" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert json.loads((run / "config.json").read_text()) == {"finished": True}
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "profile"]


def test_an_input_error_inside_a_ray_worker_is_one_line_exit_2(tmp_path):
    """Per-class read rates of the wrong length are only seen by the workers (they need the
    data's class count): one line, exit 2, and Ray did not retry (no 'Error count')."""
    root = tmp_path / "runs"
    r = _imbalance(["run", "conf/tabular.yaml", f"run.root={root}", "data.rows=1500", "train.epochs=1",
                    "train.read_sampling={strategy: rates, rates: [1.0, 0.5]}"])
    assert r.returncode == 2, r.stderr[-4000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("imbalance run: error:"), r.stderr[-4000:]
    assert "rate" in last.lower(), last
    assert "Error count" not in r.stderr  # Ray's failure policy never saw a failure to retry
    # the MLflow run ended FAILED with the error as a tag, not RUNNING for ever
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FAILED" and "rate" in run.data.tags["error"].lower()


def test_a_run_that_fails_in_its_first_stage_leaves_no_directory(tmp_path):
    """An image tree with one class folder: the ingest refuses it (one line, exit 2), the MLflow run
    is FAILED, and no run directory is left behind."""
    from PIL import Image

    tree = tmp_path / "tree" / "only"
    tree.mkdir(parents=True)
    for i in range(4):
        Image.new("L", (8, 8), color=i * 40).save(tree / f"{i}.png")
    root = tmp_path / "runs"
    r = _imbalance(["run", "conf/images.yaml", f"run.root={root}", f"data.images={tmp_path / 'tree'}"], timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1].startswith("imbalance run: error:")
    assert {p.name for p in root.iterdir()} <= {"mlflow.db", "mlartifacts"}, list(root.iterdir())  # the store only
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FAILED" and run.data.tags["error"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args, key, address", [
    (["conf/cluster.yaml"], "spark.master", "spark://spark-master:7077"),     # the shipped recipe, no such host
    (["conf/tabular.yaml", "spark.master=spark://127.0.0.1:{port}", "spark.connect_timeout_s=3"],
     "spark.master", "spark://127.0.0.1:{port}"),
    (["conf/tabular.yaml", "ray.address=127.0.0.1:{port}", "ray.connect_timeout_s=3"], "ray.address", "127.0.0.1:{port}"),
])
def test_an_unreachable_cluster_is_one_line_exit_2_within_its_wait(tmp_path, args, key, address):
    """Nothing listens at the address: a configuration error before any stage, not a traceback."""
    port = _free_port()
    root = tmp_path / "runs"
    t0 = time.time()
    r = _imbalance(["run", *[a.format(port=port) for a in args], f"run.root={root}"], timeout=120)
    took = time.time() - t0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(lines) == 1, lines
    assert f"'{key}'" in lines[0] and address.format(port=port) in lines[0], lines[0]
    assert not root.exists(), list(root.rglob("*"))
    assert took < 60, f"{took:.1f}s"


RECOMMEND_BAD = [
    "recommend.metric=macro_f2",
    "recommend.methods=[{name: ros, rho: 3}]",                 # rho and threshold_variant are experiment keys
    "recommend.methods=[{name: ros+prior, overrides: {sample.strategy: ros}}]",
    "recommend.methods=[{name: a}, {name: a}]",
    "recommend.seeds=[0, 0]",
    "recommend.finalists=0",
    "recommend.budget_minutes=-5",
]


@pytest.mark.parametrize("bad", RECOMMEND_BAD)
def test_a_bad_recommend_section_is_one_line_exit_2_and_writes_nothing(tmp_path, bad):
    root, out = tmp_path / "runs", tmp_path / "out"
    r = _imbalance(["recommend", "conf/recommend-digits.yaml", f"run.root={root}", f"recommend.out={out}", bad],
                   timeout=60)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (bad, r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("imbalance recommend: error:"), (bad, lines)
    assert "recommend." in lines[0], lines[0]
    assert not root.exists() and not out.exists(), bad
