"""Training on a two-node Ray cluster: job submission, node failure, storage probe, private local Ray."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.cluster.conftest import REPO, VENV_BIN, clean_env, get_json, wait_for

JOB_TIMEOUT = 1200
CONF = "conf/tabular.yaml"


def run_args(root: Path, *extra) -> list:
    return ["jobs/run.py", CONF, f"run.root={root}", "run.id=tabular", "data.rows=2000", "train.num_workers=2",
            "train.cpus_per_worker=1", "ray.address=auto", "spark.master=local[1]", "spark.shuffle_partitions=2",
            "spark.driver_memory=1g", *extra]


def train_actor_nodes(cluster) -> set:
    actors = get_json(f"{cluster.dashboard}/api/v0/actors?limit=2000&detail=1")["data"]["result"]["result"]
    return {a["node_id"] for a in actors if "RayTrainWorker" in (a.get("class_name") or "")}


@pytest.fixture(scope="module")
def submitted(ray_cluster, tmp_path_factory):
    """`ray job submit … -- python jobs/run.py conf/tabular.yaml` training 2 workers, once per module."""
    tmp = tmp_path_factory.mktemp("job")
    before = train_actor_nodes(ray_cluster)
    r = ray_cluster.submit(run_args(tmp / "runs", "train.epochs=2"), cwd=tmp, timeout=JOB_TIMEOUT)
    return tmp, before, r


def test_ray_job_submit_trains_on_both_nodes(ray_cluster, submitted):
    tmp_path, before, r = submitted
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "tabular" / "summary.json").read_text())
    assert "train" in summary["ran"]
    meta = json.loads(next((tmp_path / "runs" / "tabular" / "train" / "model").glob("*.json")).read_text())
    assert meta.get("world_size") == 2
    nodes = train_actor_nodes(ray_cluster) | before
    assert len(nodes) >= 2, f"training workers ran on {nodes}: not spread over both nodes"


def test_cluster_output_is_one_line_per_epoch(ray_cluster, submitted):
    """What ``ray job logs`` shows a user watching the job: the driver's output, nothing repeated."""
    _, _, r = submitted
    assert r.returncode == 0, r.stdout[-3000:]
    job_id = re.search(r"Job '(raysubmit_\w+)' submitted", r.stdout + r.stderr).group(1)
    logs = get_json(f"{ray_cluster.dashboard}/api/jobs/{job_id}/logs")["logs"]
    lines = [l.strip() for l in logs.splitlines() if l.strip()]
    assert any("train: done" in l for l in lines), lines[-60:]
    epoch_lines = [l for l in lines if re.search(r"epoch \d+/2: loss [\d.]+ .*val macro-F1 [\d.]+ .*rows/s", l)]
    assert len(epoch_lines) == 2 and "epoch 1/2" in epoch_lines[0] and "epoch 2/2" in epoch_lines[1], lines[-60:]
    repeated = sorted({l for l in lines if lines.count(l) > 1})
    assert not repeated, repeated
    noise = [l for l in lines if "PlacementGroupCleaner" in l or "Failed to send resource request" in l
             or "\r" in l or "\x1b[" in l]
    assert not noise, noise


def epochs_printed(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"epoch (\d+)/5:", text)]


def test_node_failure_resumes_from_checkpoint(ray_cluster, tmp_path):
    root = tmp_path / "runs"
    # one Petastorm reader thread per worker: rows then come in the same seeded order in every run
    # (with two threads the order of row groups varies between runs, and so does the loss)
    args = run_args(root, "train.epochs=5", "train.max_failures=3", "stream.workers_count=1")
    # the undisturbed run (same seed) first; its data stages are then reused by the disturbed run
    r = ray_cluster.submit(args, cwd=tmp_path, timeout=JOB_TIMEOUT)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-3000:]
    run_dir = root / "tabular"
    clean = json.loads((run_dir / "train" / "train_summary.json").read_text())
    for stage in ("train", "predict", "evaluate", "report"):
        shutil.rmtree(run_dir / stage, ignore_errors=True)

    log = tmp_path / "driver.log"
    with open(log, "w") as fh:
        cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", ray_cluster.dashboard,  # the agent is up: see the fixture
               "--working-dir", str(REPO), "--", "python", *args]
        job = subprocess.Popen(cmd, cwd=tmp_path, env=clean_env(), stdout=fh, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        def checkpointed():
            snaps = list((run_dir / "train" / "ray").glob("train-*/checkpoint_manager_snapshot.json"))
            if not snaps:
                return None
            eps = [c["metrics"]["epoch"] for c in json.loads(snaps[0].read_text())["checkpoint_results"]]
            return max(eps) if eps else None
        wait_for(lambda: checkpointed() is not None, JOB_TIMEOUT, "the first checkpoint", interval=0.2)
        k = checkpointed()                                       # epoch (1-based) of the newest checkpoint
        node = ray_cluster.nodes[-1]
        (raylet,) = [p for p in node.descendants() if p.name() == "raylet"]
        t_kill = time.time()
        raylet.kill()
        ray_cluster.add_node()                                   # a replacement node
        rc = job.wait(timeout=JOB_TIMEOUT)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, 9)
    text = log.read_text()
    assert rc == 0, text[-6000:]
    # the restarted worker group says where it resumed: at the checkpoint we saw before the kill,
    # or one that landed while the node was dying; never at the start
    resumed = [int(m) for m in re.findall(r"resuming after epoch (\d+)/5 from its checkpoint", text)]
    # (the group may be restarted more than once while the dead node is noticed, within
    # train.max_failures; each restart resumes from a checkpoint, never from the start)
    assert resumed and resumed[0] in (k, k + 1), (k, resumed, text[-4000:])
    assert resumed == sorted(resumed) and len(resumed) <= 3, (k, resumed, text[-4000:])
    after = epochs_printed(text[text.rindex("resuming after epoch"):])
    assert after == list(range(resumed[-1] + 1, 6)), (k, resumed, after)
    got = json.loads((run_dir / "train" / "train_summary.json").read_text())
    assert got["epochs_run"] == clean["epochs_run"] == 5
    # Same seed, same shards, same resumed optimizer state, CPU float math: the model is the same up
    # to float reduction order; 1e-6 on the loss and the exact macro-F1 would show any skipped or
    # repeated batch (one batch changes the loss by far more than that).
    for a, b in zip(clean["history"], got["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6, abs=1e-6)
        assert a["val_macro_f1"] == pytest.approx(b["val_macro_f1"], abs=1e-9)
    (tmp_path / "resume_seconds.txt").write_text(f"{time.time() - t_kill:.1f}\n")


def test_storage_probe_names_run_root_and_node(ray_cluster, tmp_path):
    """Every node is probed; one that cannot write fails in one line naming run.root and the node.

    The tier runs as any user, root included, for whom permission bits do not stop a write: the
    unwritable run root is a path below a regular file, which no user can create.
    """
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the run root's parent should be\n")
    code = ("import ray, sys\n"
            "from pipeline.errors import InputError\n"
            "from pipeline.train.trainer import probe_storage\n"
            "ray.init(address='auto')\n"
            "print('NODES', sum(1 for n in ray.nodes() if n['Alive']))\n"
            "probe_storage(sys.argv[1] + '/ok')\n"
            "try:\n    probe_storage(sys.argv[2])\nexcept InputError as e:\n    print('ERR', e)\n")
    r = ray_cluster.submit(["-c", code, str(tmp_path), str(blocker / "runs" / "x" / "ray")], cwd=tmp_path,
                           timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "NODES 2" in r.stdout, r.stdout[-3000:]
    errs = [l for l in r.stdout.splitlines() if l.startswith("ERR ")]
    assert len(errs) == 1, r.stdout[-3000:]
    line = errs[0]
    # Ray names a node by the machine's address even when started with --node-ip-address 127.0.0.1
    ips = {v for n in ray_cluster.node_list() for v in (n.get("ip"), n.get("raylet", {}).get("nodeManagerAddress")) if v}
    assert "run.root" in line and str(blocker) in line, line
    assert re.search(r"Ray node (\S+) \(node [0-9a-f]{8}\)", line).group(1) in ips, (line, ips)
    assert (tmp_path / "ok").is_dir()


def test_null_address_starts_private_ray(ray_cluster, tmp_path):
    """With a `ray start` cluster advertised in /tmp/ray/ray_current_cluster, `imbalance run` with no
    ray.address must start its own Ray and leave that cluster alone."""
    addr_file = Path("/tmp/ray/ray_current_cluster")
    saved = addr_file.read_text() if addr_file.exists() else None
    addr_file.parent.mkdir(parents=True, exist_ok=True)
    addr_file.write_text(ray_cluster.address)
    drivers_before = _drivers(ray_cluster)
    try:
        r = subprocess.run([str(VENV_BIN / "python"), "-m", "pipeline.cli", "run", CONF,
                            f"run.root={tmp_path / 'runs'}", "data.rows=1500", "train.epochs=1",
                            "train.num_workers=1", "spark.master=local[1]", "spark.shuffle_partitions=2"],
                           cwd=REPO, env=clean_env(PYTHONPATH=str(REPO)), capture_output=True, text=True,
                           timeout=JOB_TIMEOUT)
    finally:
        if saved is None:
            addr_file.unlink(missing_ok=True)
        else:
            addr_file.write_text(saved)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "Found multiple active Ray instances" not in r.stderr + r.stdout
    assert _drivers(ray_cluster) == drivers_before, "the run joined the `ray start` cluster"
    assert ray_cluster.alive_nodes() >= 2                        # the cluster is still up


def _drivers(cluster) -> int:
    """How many drivers (jobs of any kind, including plain ray.init() scripts) the cluster has seen."""
    return len(get_json(f"{cluster.dashboard}/api/jobs/"))
