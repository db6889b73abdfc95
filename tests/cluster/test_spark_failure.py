"""A Spark executor killed during `sample` on 200k rows: Spark retries, and the output is exact."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.cluster.conftest import REPO, clean_env, wait_for
from tests.cluster.test_spark_submit import SUBMIT_TIMEOUT, spark_submit, submit_command

ROWS = 200_000
RUN_DEPENDENT = {"out", "output", "seconds", "wall_s", "input_path"}   # where, not what


@pytest.fixture(scope="module")
def table_200k(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("t200k") / "table"
    subprocess.run([sys.executable, "-m", "pipeline.cli", "synth", "--preset", "tabular", "--rows", str(ROWS),
                    "--partitions", "8", "--out", str(out)], check=True, cwd=REPO,
                   env=clean_env(PYTHONPATH=str(REPO)), timeout=SUBMIT_TIMEOUT, capture_output=True)
    return out


def sample_args(table: Path, out: Path) -> list:
    return ["--input", table, "--out", out, "--strategy", "ros", "--seed", "3"]


def content(out: Path):
    manifest = {k: v for k, v in json.loads((out / "manifest.json").read_text()).items() if k not in RUN_DEPENDENT}
    t = pq.read_table(out / "data")
    keys = [c for c in ("id", "copy", "_copy", "copy_index") if c in t.column_names]
    assert keys[:1] == ["id"], t.column_names
    rows = Counter(zip(*(t.column(c).to_pylist() for c in keys)))
    return manifest, rows


def executor_pids(cluster) -> list:
    """Executor JVMs launched by OUR workers (children of the worker pids we started)."""
    pids = []
    for w in cluster.workers:
        for p in w.descendants():
            try:
                if "CoarseGrainedExecutorBackend" in " ".join(p.cmdline()):
                    pids.append(p)
            except Exception:
                pass
    return pids


def test_executor_killed_during_sample_gives_identical_output(spark_cluster, wheel, exec_python, table_200k,
                                                               tmp_path):
    clean = tmp_path / "clean"
    r = spark_submit(spark_cluster, wheel, exec_python, "sample.py", sample_args(table_200k, clean), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    manifest, rows = content(clean)
    assert all(v == 1 for v in rows.values()), "duplicated (id, copy) in the undisturbed run"

    disturbed = tmp_path / "disturbed"
    log = tmp_path / "disturbed.log"
    with open(log, "w") as fh:
        job = subprocess.Popen(submit_command(spark_cluster, wheel, exec_python, "sample.py",
                                              sample_args(table_200k, disturbed)),
                               cwd=tmp_path, env=clean_env(), stdout=fh, stderr=subprocess.STDOUT,
                               start_new_session=True)

    def running_task():
        # an executor of ours has started running tasks of this application (its log says so)
        for p in executor_pids(spark_cluster):
            argv = p.cmdline()
            app = argv[argv.index("--app-id") + 1]
            if any("Running task" in f.read_text(errors="replace")
                   for f in spark_cluster.root.glob(f"work*/{app}/*/stderr")):
                return p
        return None

    try:
        victim = wait_for(running_task, SUBMIT_TIMEOUT, "an executor running a task of the sample job",
                          interval=0.2)
        victim.kill()
        rc = job.wait(timeout=SUBMIT_TIMEOUT)
    finally:
        if job.poll() is None:
            job.kill()
    text = log.read_text(errors="replace")
    assert rc == 0, text[-5000:]
    assert "Lost executor" in text or "lost" in text.lower(), "the executor was not lost: " + text[-3000:]
    got_manifest, got_rows = content(disturbed)
    assert got_manifest == manifest
    assert got_rows == rows                                      # nothing duplicated, nothing lost
