"""Both clusters at once, as the README's combined recipes run them: Spark stages on the standalone
master's executors and training on the two-node Ray cluster, from spark-submit and from
``ray job submit``."""
from __future__ import annotations

import json
import time

from tests.cluster.conftest import REPO, get_json
from tests.cluster.test_ray_cluster import JOB_TIMEOUT, run_args
from tests.cluster.test_spark_submit import app_of, spark_submit

EXECUTORS = "spark.conf={spark.executor.memory: 768m, spark.executor.cores: '1'}"


def train_workers(cluster) -> dict:
    """Every Ray Train worker actor the cluster has run: actor id -> node id."""
    actors = get_json(f"{cluster.dashboard}/api/v0/actors?limit=2000&detail=1")["data"]["result"]["result"]
    return {a["actor_id"]: a["node_id"] for a in actors if "RayTrainWorker" in (a.get("class_name") or "")}


def assert_trained_on_the_ray_cluster(ray_cluster, run_dir, before: set) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["ran"][0] == "source" and summary["ran"][-1] == "report", summary["ran"]
    meta = json.loads(next((run_dir / "train" / "model").glob("*.json")).read_text())
    assert meta.get("world_size") == 2, meta
    new = set(train_workers(ray_cluster)) - before
    assert len(new) >= 2, "this run's Ray Train workers did not run on the Ray cluster (a private Ray on the driver?)"


def test_spark_submit_with_training_on_the_ray_cluster(spark_cluster, ray_cluster, wheel, exec_python, tmp_path):
    """spark-submit runs the driver here; ray.address sends training to the cluster, and the
    package reaches the Ray workers without being installed on the nodes."""
    before = set(train_workers(ray_cluster))
    t0 = time.time() * 1000
    args = [REPO / "conf" / "tabular.yaml", f"run.root={tmp_path / 'runs'}", "run.id=both", "data.rows=2000", "train.epochs=1",
            "train.num_workers=2", "train.cpus_per_worker=1", "spark.shuffle_partitions=4",
            "spark.app_name=submit-with-ray", f"ray.address={ray_cluster.address}"]
    r = spark_submit(spark_cluster, wheel, exec_python, "run.py", args, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    app_of(spark_cluster, "submit-with-ray", t0)
    assert_trained_on_the_ray_cluster(ray_cluster, tmp_path / "runs" / "both", before)


def test_ray_job_with_spark_stages_on_the_standalone_master(spark_cluster, ray_cluster, tmp_path):
    """``ray job submit`` runs the driver on the Ray head; spark.master sends the Spark stages to the
    standalone cluster, whose executors get the package from the driver."""
    before = set(train_workers(ray_cluster))
    t0 = time.time() * 1000
    args = run_args(tmp_path / "runs", "train.epochs=1", f"spark.master={spark_cluster.url}",
                    "spark.app_name=ray-job-with-spark", EXECUTORS)
    r = ray_cluster.submit(args, cwd=tmp_path, timeout=JOB_TIMEOUT)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-3000:]
    app_of(spark_cluster, "ray-job-with-spark", t0)
    assert_trained_on_the_ray_cluster(ray_cluster, tmp_path / "runs" / "tabular", before)
