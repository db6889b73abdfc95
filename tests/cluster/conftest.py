"""Cluster tier: a real Spark standalone cluster and a real two-node Ray cluster on 127.0.0.1.

Each fixture starts its daemons as subprocesses in their own process group and stops exactly
those processes (by process group, then any descendant left) — never ``ray stop`` or a pattern
kill: other Spark and Ray instances on the machine must survive. Ports are picked free at run
time; readiness is polled, never slept for.

Run it with ``python -m pytest -q tests/cluster`` (the main suite, ``pytest -q tests
--ignore=tests/cluster``, skips it).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SPARK_HOME = str(Path(__import__("pyspark").__file__).parent)   # spark-class finds its jars here
STARTUP_TIMEOUT = 180          # seconds; a slow shared machine can take a minute to start a JVM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, interval: float = 0.5, daemon=None):
    """Poll ``check()`` until it returns something truthy; fail with ``what`` after ``timeout`` s
    (or as soon as ``daemon``, the process that should answer, has exited)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if daemon is not None and daemon.proc.poll() is not None:
            raise RuntimeError(f"{what}: {daemon.args[:3]} exited {daemon.proc.returncode}:\n{daemon.tail()}")
        try:
            got = check()
            if got:
                return got
        except Exception as e:  # not up yet
            last = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last})")


def get_json(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def clean_env(**extra) -> dict:
    """This process's environment without the checkout on PYTHONPATH (as on a real cluster node)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "RAY_ADDRESS", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")
           and not k.startswith("PYSPARK_GATEWAY")}
    env.update(SPARK_LOCAL_IP="127.0.0.1", RAY_USAGE_STATS_ENABLED="0", SPARK_HOME=SPARK_HOME)
    env.update(extra)
    return env


class Daemon:
    """One started process (and its process group): stopped by pid, nothing else."""

    def __init__(self, args, log: Path, env: dict, cwd=None):
        self.args = [str(a) for a in args]
        self.log = log
        self._fh = open(log, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self._fh, stderr=subprocess.STDOUT, env=env,
                                     cwd=cwd, start_new_session=True)

    def descendants(self) -> list:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 30) -> None:
        kids = self.descendants()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            for k in kids:  # a child that left the group (setsid) is still ours
                try:
                    k.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                continue
            _, alive = psutil.wait_procs(kids, timeout=timeout if sig == signal.SIGTERM else 5)
            if not alive:
                break
        self._fh.close()

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@pytest.fixture(scope="session")
def cluster_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cluster")


# ------------------------------------------------------------------ packaging: wheel + executor venv
@pytest.fixture(scope="session")
def wheel(cluster_tmp) -> Path:
    """This project built as a wheel (``pip wheel --no-deps``), shipped with --py-files as a .zip.

    PySpark puts only .zip/.egg/.jar entries of --py-files on the executors' sys.path (a .whl
    reaches the driver only: executors then fail with "No module named 'pipeline'"); a wheel is a
    zip archive, so a copy named .zip works everywhere.
    """
    out = cluster_tmp / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(REPO)], check=True, env=clean_env(), cwd=cluster_tmp, timeout=300)
    (whl,) = out.glob("imbalance_pipeline-*.whl")
    shipped = out / "imbalance_pipeline.zip"
    shutil.copyfile(whl, shipped)
    return shipped


@pytest.fixture(scope="session")
def exec_python(cluster_tmp) -> Path:
    """An interpreter with the pinned dependencies but NOT this project, like a cluster node's.

    A bare venv whose ``deps.pth`` names the main venv's site-packages: a path line in a .pth
    file is appended to sys.path without running that directory's own .pth files, so the
    project's editable-install finder there is not loaded.
    """
    venv = cluster_tmp / "exec-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    main_site = [p for p in sys.path if p.endswith("site-packages") and Path(p).parent.parent.parent
                 == Path(sys.executable).parent.parent]
    assert main_site, sys.path
    Path(site, "deps.pth").write_text(main_site[0] + "\n")
    probe = subprocess.run([str(py), "-c", "import pyarrow, pyspark, torch, petastorm; import pipeline"],
                           capture_output=True, text=True, env=clean_env(), cwd=cluster_tmp)
    assert "No module named 'pipeline'" in probe.stderr, probe.stderr   # deps yes, project no
    return py


# ------------------------------------------------------------------ Spark standalone
class SparkCluster:
    def __init__(self, root: Path):
        self.root = root
        self.port, self.webui = free_port(), free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.env = clean_env(SPARK_LOG_DIR=str(root / "logs"), SPARK_WORKER_DIR=str(root / "work"),
                             SPARK_NO_DAEMONIZE="1")
        (root / "logs").mkdir(parents=True, exist_ok=True)
        cls = VENV_BIN / "spark-class"
        self.master = Daemon([cls, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                              "--port", self.port, "--webui-port", self.webui], root / "master.log", self.env)
        self.workers = []
        try:
            wait_for(lambda: self.state().get("status") == "ALIVE", STARTUP_TIMEOUT, "the Spark master", daemon=self.master)
            for i in range(2):
                self.workers.append(Daemon(
                    [cls, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "1",
                     "--memory", "1g", "--port", free_port(), "--webui-port", free_port(),
                     "--work-dir", root / f"work{i}", self.url], root / f"worker{i}.log", self.env))
            wait_for(lambda: sum(w["state"] == "ALIVE" for w in self.state()["workers"]) == 2,
                     STARTUP_TIMEOUT, "two Spark workers")
        except Exception:
            self.stop()
            raise

    def state(self) -> dict:
        return get_json(f"http://127.0.0.1:{self.webui}/json/")

    def stop(self) -> None:
        for d in [*self.workers, self.master]:
            d.stop()


@pytest.fixture(scope="session")
def spark_cluster(cluster_tmp):
    c = SparkCluster(cluster_tmp / "spark")
    yield c
    c.stop()


# ------------------------------------------------------------------ Ray: head + one more node
class RayCluster:
    """``ray start --head`` plus worker nodes, each a ``ray start --block`` we own.

    ``--temp-dir`` is private, so ``ray start`` writes its address file there and not to
    /tmp/ray/ray_current_cluster, where a plain ``ray.init()`` elsewhere on the machine would find it.
    """

    def __init__(self, root: Path, python: Path, worker_nodes: int = 1):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        # Unix socket paths must stay short: a private temp dir directly under /tmp
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
        self.port, self.dash = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dash}"
        # nodes run the project-free interpreter (its bin/ first on PATH: a job's `python` is it),
        # so jobs find our code only through `ray job submit --working-dir`
        self.env = clean_env(PATH=f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}")
        self.python = python
        self.nodes: list[Daemon] = []
        self.node_temp_dirs: list[Path] = []
        try:
            self.head = Daemon(
                [python, "-m", "ray.scripts.scripts", "start", "--head", "--node-ip-address", "127.0.0.1", "--port", self.port,
                 "--num-cpus", "1", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                 "--dashboard-port", self.dash, "--temp-dir", self.temp_dir, "--disable-usage-stats",
                 "--min-worker-port", "0", "--max-worker-port", "0", "--ray-client-server-port", free_port(),
                 *self.node_ports(), "--block"],
                root / "head.log", self.env)
            self.nodes.append(self.head)
            wait_for(lambda: self.alive_nodes() >= 1, STARTUP_TIMEOUT, "the Ray head", daemon=self.head)
            for _ in range(worker_nodes):
                self.add_node()
        except Exception:
            self.stop()
            raise

    @staticmethod
    def node_ports() -> list:
        """Each node's agents on free ports: Ray's fixed defaults (52365, ...) would collide with any
        other Ray on the machine, and the node's job agent would never come up."""
        return ["--dashboard-agent-listen-port", free_port(), "--dashboard-agent-grpc-port", free_port(),
                "--metrics-export-port", free_port(), "--runtime-env-agent-port", free_port()]

    def add_node(self) -> Daemon:
        """One more ``ray start --address`` node, with its own temp dir, as a separate machine has.

        Nodes sharing one temp dir share one ``runtime_resources/`` too: the second node's runtime
        env agent then deletes the job's unpacked working dir (the driver's cwd, and the cwd of the
        driver's Spark Python workers) when its own workers are done with it, and the next Spark
        task that loads torch dies with "Intel oneMKL FATAL ERROR: Cannot load libtorch_cpu.so".
        """
        n = len(self.nodes)
        want = self.alive_nodes() + 1
        node_tmp = Path(tempfile.mkdtemp(prefix=f"rn{n}-", dir="/tmp"))
        self.node_temp_dirs.append(node_tmp)
        d = Daemon([self.python, "-m", "ray.scripts.scripts", "start", "--address", self.address, "--node-ip-address", "127.0.0.1",
                    "--num-cpus", "1", "--disable-usage-stats", "--temp-dir", node_tmp, *self.node_ports(), "--block"],
                   self.root / f"node{n}.log", self.env)
        self.nodes.append(d)
        wait_for(lambda: self.alive_nodes() >= want, STARTUP_TIMEOUT, f"Ray node {n}", daemon=d)
        return d

    def node_list(self) -> list:
        return get_json(f"{self.dashboard}/nodes?view=summary")["data"]["summary"]

    def alive_nodes(self) -> int:
        return sum(1 for n in self.node_list() if n.get("raylet", {}).get("state") == "ALIVE")

    def submit(self, args: list, cwd: Path, wait: bool = True, **kw):
        """``ray job submit --address http://127.0.0.1:DASH --working-dir . -- python jobs/run.py …``."""
        cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", self.dashboard, "--working-dir", str(REPO)]
        if not wait:
            cmd.append("--no-wait")
        cmd += ["--", "python", *map(str, args)]
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            r = subprocess.run(cmd, cwd=cwd, env=clean_env(), capture_output=True, text=True, **kw)
            # a node is listed alive before its dashboard agent takes jobs; the job did not start
            if "No available agent to submit job" not in r.stderr or time.monotonic() > deadline:
                break
            time.sleep(2)
        (Path(cwd) / "ray-job-submit.log").write_text(r.stdout + r.stderr)
        return r

    def wait_for_job_agent(self) -> None:
        """Poll until the head's job agent accepts submissions (a trivial job succeeds)."""
        r = self.submit(["-c", "pass"], cwd=self.root, timeout=STARTUP_TIMEOUT)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]

    def jobs(self) -> list:
        return get_json(f"{self.dashboard}/api/jobs/")

    def stop(self) -> None:
        for d in reversed(self.nodes):
            d.stop()
        # keep the session's logs (job drivers, raylets) beside the test's files, then clean up
        for i, tmp in enumerate([self.temp_dir, *self.node_temp_dirs]):
            for logs in tmp.glob("session_2*/logs"):
                shutil.copytree(logs, self.root / "logs" / f"node{i}-{logs.parent.name}", dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("*.sock", "*.err.*"), ignore_dangling_symlinks=True)
            shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster(cluster_tmp, exec_python):
    c = RayCluster(cluster_tmp / "ray", exec_python)
    try:
        c.wait_for_job_agent()
    except Exception:
        c.stop()
        raise
    yield c
    c.stop()
