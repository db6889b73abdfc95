"""The Docker images, compose file and scheduling examples agree with pyproject.toml's pins.

No Docker engine runs here, so the images cannot be built in tests; instead this reads the files
and fails when a pin is bumped in one place only (pyproject.toml, constraints.txt, a Dockerfile).
"""
from __future__ import annotations

import ast
import fcntl
import os
import re
import runpy
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"cpu": ROOT / "docker" / "Dockerfile.cpu", "cuda": ROOT / "docker" / "Dockerfile.cuda"}
# the measured stack (DESIGN.md "The environment"): each must be pinned exactly in both images
PINNED = ["ray", "pyspark", "pyarrow", "numpy", "pandas", "petastorm", "torch", "mlflow"]


def pyproject_requirements() -> dict[str, Requirement]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = [Requirement(r) for r in data["project"]["dependencies"]]
    return {canonicalize_name(r.name): r for r in reqs}


def dockerfile_text(path: Path) -> str:
    """The Dockerfile with line continuations joined and comments dropped."""
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    return re.sub(r"\\\n", " ", "\n".join(lines))


def build_args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))


def expand(text: str, args: dict[str, str]) -> str:
    for k, v in args.items():
        text = text.replace("${" + k + "}", v).replace("$" + k, v)
    return text


def pip_pins(text: str) -> dict[str, list[tuple[str, set[str]]]]:
    """``name -> [(version, extras), ...]`` for every quoted ``name[extras]==version`` in pip lines."""
    out: dict[str, list[tuple[str, set[str]]]] = {}
    for line in text.splitlines():
        if "pip install" not in line:
            continue
        for m in re.finditer(r"\"?([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([0-9][^\s\"']*)\"?", line):
            name, extras, version = m.group(1), m.group(2) or "", m.group(3)
            ex = {e.strip() for e in extras.strip("[]").split(",") if e.strip()}
            out.setdefault(canonicalize_name(name), []).append((version, ex))
    return out


@pytest.fixture(scope="module")
def reqs():
    return pyproject_requirements()


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_pins_match_pyproject(kind, reqs):
    text = dockerfile_text(DOCKERFILES[kind])
    pins = pip_pins(expand(text, build_args(text)))
    for name in PINNED:
        key = canonicalize_name(name)
        assert key in reqs, f"pyproject.toml no longer lists {name}"
        assert key in pins, f"Dockerfile.{kind} does not pin {name} (name==version in a pip install)"
        for version, extras in pins[key]:
            assert reqs[key].specifier.contains(Version(version), prereleases=True), (
                f"Dockerfile.{kind} pins {name}=={version}, outside pyproject.toml's "
                f"'{reqs[key].specifier}'")
            assert reqs[key].extras <= extras, (
                f"Dockerfile.{kind} installs {name} without extras {sorted(reqs[key].extras)}")


def test_both_images_pin_the_same_versions():
    pins = {}
    for kind, path in DOCKERFILES.items():
        text = dockerfile_text(path)
        pins[kind] = {k: sorted(v for v, _ in vs) for k, vs in pip_pins(expand(text, build_args(text))).items()}
    for name in PINNED:
        key = canonicalize_name(name)
        assert pins["cpu"][key] == pins["cuda"][key], f"{name}: cpu {pins['cpu'][key]} vs cuda {pins['cuda'][key]}"


def test_torch_matches_constraints_and_installs_first_from_the_right_index(reqs):
    constraints = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            r = Requirement(line)
            constraints[canonicalize_name(r.name)] = r
    assert "torch" in constraints, "constraints.txt must pin torch"
    (torch_pin,) = [s.version for s in constraints["torch"].specifier if s.operator == "=="]
    assert reqs["torch"].specifier.contains(Version(torch_pin))
    for kind, path in DOCKERFILES.items():
        text = dockerfile_text(path)
        args = build_args(text)
        assert args.get("TORCH_VERSION") == torch_pin, f"Dockerfile.{kind}: TORCH_VERSION != constraints.txt"
        # the constraints file is in the image and every pip call reads it
        assert re.search(r"^COPY\s+constraints\.txt\s+/opt/constraints\.txt", text, re.M), kind
        assert re.search(r"PIP_CONSTRAINT=/opt/constraints\.txt", text), kind
        full = expand(text, args)
        installs = [ln for ln in full.splitlines() if "pip install" in ln]
        assert "torch==" + torch_pin in installs[0], f"Dockerfile.{kind}: torch must be the first pip install"
        index = re.search(r"--index-url\s+\"?(\S+?)\"?(\s|$)", installs[0]).group(1)
        if kind == "cpu":
            assert index == "https://download.pytorch.org/whl/cpu"
        else:
            assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", index), index


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_python_and_java_versions(kind):
    text = dockerfile_text(DOCKERFILES[kind])
    full = expand(text, build_args(text))
    base = re.search(r"^FROM\s+(\S+)", full, re.M).group(1)
    if kind == "cpu":
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim-bookworm", base), base
    else:
        assert base.startswith("nvidia/cuda:") and "runtime" in base, base
        assert re.search(r"apt-get install[^\n]*\bpython3\.11\b", full)
    assert re.search(r"apt-get install[^\n]*\bopenjdk-17-jre-headless\b", full), "Java 17 missing"
    assert "python3.11 -m venv /opt/venv" in full
    assert "SPARK_HOME=/opt/venv/lib/python3.11/site-packages/pyspark" in full
    assert "PYSPARK_PYTHON=/opt/venv/bin/python" in full
    # pyproject must still accept Python 3.11
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    from packaging.specifiers import SpecifierSet
    assert SpecifierSet(data["project"]["requires-python"]).contains("3.11")


def test_dockerfile_copies_exist():
    """Everything the images COPY is in the repository (or the build would fail)."""
    for kind, path in DOCKERFILES.items():
        for m in re.finditer(r"^COPY\s+(.+)\s+\S+$", dockerfile_text(path), re.M):
            for src in m.group(1).split():
                if src.startswith("--"):
                    continue
                if src == "README.md" and not (ROOT / src).exists():
                    pytest.fail("README.md is missing but pyproject.toml and the Dockerfiles need it")
                assert (ROOT / src).exists(), f"Dockerfile.{kind} copies {src}, which does not exist"


def test_compose_cluster():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    for name in ("spark-master", "spark-worker", "ray-head", "ray-worker"):
        assert name in services, f"compose.yaml lacks {name}"
    for name, svc in services.items():
        assert svc["build"]["dockerfile"] == "docker/Dockerfile.cpu", name
        assert (ROOT / "docker" / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file(), name
        assert "shared:/data" in svc["volumes"], f"{name} does not mount the shared volume"
    assert "shared" in compose["volumes"]
    cmd = lambda s: " ".join(services[s]["command"])  # noqa: E731
    assert "org.apache.spark.deploy.master.Master" in cmd("spark-master") and "--port 7077" in cmd("spark-master")
    assert "spark://spark-master:7077" in cmd("spark-worker")
    assert "ray start --head --port=6379" in cmd("ray-head")
    assert "--address=ray-head:6379" in cmd("ray-worker")
    # the job service points the CLI at both clusters and at the shared volume
    job = cmd("pipeline")
    assert "spark.master=spark://spark-master:7077" in job and "ray.address=ray-head:6379" in job
    assert "run.root=/data/" in job
    conf = job.split()[2]
    assert conf.startswith("/opt/imbalance-pipeline/conf/") and (ROOT / "conf" / Path(conf).name).is_file()


def _cron_entry():
    text = (ROOT / "deploy" / "cron" / "imbalance-retrain.cron").read_text()
    assert text.endswith("\n"), "cron files must end with a newline"
    lines = [ln for ln in text.splitlines()
             if ln.strip() and not ln.startswith("#") and not re.match(r"^[A-Z_]+=", ln)]
    assert len(lines) == 1, lines
    return lines[0].split(None, 6)


def test_cron_line_runs_retrain_with_flock_and_logging():
    minute, hour, dom, month, dow, user, command = _cron_entry()
    assert minute.isdigit() and hour.isdigit() and (dom, month, dow) == ("*", "*", "*")  # nightly
    assert "flock -n" in command and "imbalance retrain conf/retrain.yaml" in command
    assert re.search(r'>>\s*"?\S+\.log"?\s+2>&1$', command.replace("$(date -u +\\%F)", "DATE"))
    assert not re.search(r"(?<!\\)%", command), '"%" must be escaped in crontab commands'


def test_cron_command_logs_exit_status_and_skips_when_locked(tmp_path):
    """Run the cron command as cron would (bash, "\\%" unescaped), with `imbalance` standing in as
    a script that reports its arguments and fails with status 3."""
    command = _cron_entry()[6].replace("\\%", "%")
    lock = tmp_path / "retrain.flock"
    assert "/tmp/imbalance-retrain.flock" in command
    command = command.replace("/tmp/imbalance-retrain.flock", str(lock))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "imbalance"
    fake.write_text('#!/bin/sh\necho "called with: $*"\nexit 3\n')
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}",
               IMBALANCE_HOME=str(tmp_path), IMBALANCE_LOGS=str(tmp_path / "logs"))
    subprocess.run(["bash", "-c", command], env=env, check=True, timeout=60)
    (log,) = (tmp_path / "logs").iterdir()
    assert re.fullmatch(r"retrain-\d{4}-\d{2}-\d{2}\.log", log.name)
    text = log.read_text()
    assert "called with: retrain conf/retrain.yaml" in text and "exit status 3" in text

    with open(lock, "w") as f:  # a retrain still running: the next one is skipped, and says so
        fcntl.flock(f, fcntl.LOCK_EX)
        subprocess.run(["bash", "-c", command], env=env, check=True, timeout=60)
    assert log.read_text().count("called with") == 1
    assert log.read_text().strip().endswith("exit status 75")


def test_airflow_dag_calls_the_cli():
    path = ROOT / "deploy" / "airflow" / "imbalance_retrain_dag.py"
    tree = ast.parse(path.read_text())
    ops = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
           and getattr(n.func, "id", getattr(n.func, "attr", None)) == "BashOperator"]
    assert ops, "no BashOperator in the DAG"
    ns = runpy.run_path(str(path))  # importable without Airflow
    assert re.search(r"(^|&& )imbalance retrain \S+", ns["RETRAIN_COMMAND"])
    assert ns["RETRAIN_COMMAND"].endswith("conf/retrain.yaml")
    commands = [kw.value.id for op in ops for kw in op.keywords
                if kw.arg == "bash_command" and isinstance(kw.value, ast.Name)]
    assert "RETRAIN_COMMAND" in commands
