"""deploy/cron/imbalance-retrain.cron run as cron runs it: the command field of its one line, "\\%"
unescaped, under the file's SHELL with only the file's variables (and HOME/LOGNAME, which cron sets),
pointed at temporary paths. It runs the real `imbalance retrain` on the tiny retrain home."""
from __future__ import annotations

import fcntl
import re
import time

from tests.airflow.conftest import PROJECT_BIN, REPO, run, tail

CRON_FILE = REPO / "deploy" / "cron" / "imbalance-retrain.cron"
INSTALL_DIR = "/opt/imbalance-pipeline"           # where the cron file expects the checkout and its .venv
LOCK = "/tmp/imbalance-retrain.flock"
STATUS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ imbalance retrain exit status (\d+)$")


def cron_job(tmp_path, home):
    """(argv, env) for the file's job: its command as cron hands it to SHELL, its variables with the
    install paths swapped for this checkout and ``home``, logs and the lock under ``tmp_path``."""
    variables, jobs = {}, []
    for line in CRON_FILE.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$", line)
        if m:
            variables[m[1]] = m[2]
        else:
            jobs.append(line)
    (job,) = jobs
    command = job.split(None, 6)[6]
    assert not re.search(r"(?<!\\)%", command), 'an unescaped "%" would end the command (cron makes it stdin)'
    command = command.replace("\\%", "%")
    assert command.count(LOCK) == 1, command
    command = command.replace(LOCK, str(tmp_path / "retrain.flock"))   # not a lock a real install could hold

    assert variables["IMBALANCE_HOME"] == INSTALL_DIR and variables["PATH"].startswith(f"{INSTALL_DIR}/.venv/bin:")
    env = dict(variables, HOME=str(tmp_path), LOGNAME="imbalance",
               PATH=variables["PATH"].replace(f"{INSTALL_DIR}/.venv/bin", str(PROJECT_BIN)),
               IMBALANCE_HOME=str(home), IMBALANCE_LOGS=str(tmp_path / "logs"))
    return [variables.get("SHELL", "/bin/sh"), "-c", command], env


def log_text(tmp_path) -> str:
    logs = sorted((tmp_path / "logs").glob("retrain-*.log"))   # one a day (two if the run crosses midnight)
    assert logs and all(re.fullmatch(r"retrain-\d{4}-\d\d-\d\d\.log", p.name) for p in logs), logs
    return "".join(p.read_text() for p in logs)


def test_cron_line_runs_the_retrain_and_logs_exit_status_0(tmp_path, retrain_home):
    argv, env = cron_job(tmp_path, retrain_home)
    r = run(argv, env, timeout=480, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "", r.stdout           # everything goes to the day's log
    text = log_text(tmp_path)
    last = STATUS.match(text.splitlines()[-1])
    assert last and last[1] == "0", tail(text)
    # the retrain's own answer: a first model promoted, or (after the Airflow test trained it) nothing new
    status = re.search(r'^  "status": "(\w+)"', text, re.M)
    assert status and status[1] in ("promoted", "up_to_date"), tail(text)
    assert re.search(r'^  "production": "1"', text, re.M), tail(text)


def test_cron_line_skips_while_the_last_retrain_holds_the_lock(tmp_path, retrain_home):
    """A run that finds the lock held (last night's retrain still running) does nothing and logs 75."""
    argv, env = cron_job(tmp_path, retrain_home)
    before = sorted(retrain_home.rglob("*"))
    with open(tmp_path / "retrain.flock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)             # what flock(1) in the running job holds
        t0 = time.monotonic()
        r = run(argv, env, timeout=60, cwd=tmp_path)
        seconds = time.monotonic() - t0
    assert r.returncode == 0 and r.stdout == "", r.stdout
    lines = log_text(tmp_path).splitlines()
    assert len(lines) == 1 and (m := STATUS.match(lines[0])) and m[1] == "75", lines
    assert seconds < 30                                             # it did not wait for the lock
    assert sorted(retrain_home.rglob("*")) == before                # no retrain ran
