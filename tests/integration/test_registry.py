"""The registry is MLflow's: versions, the aliases production/previous, compare-and-set promotion under
a lock (real SQLite store, real processes, real flock), ``imbalance registry`` and a bad config."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.errors import InputError
from pipeline.flows import promotion, tracking


def _cfg(root: Path, *extra):
    return load_config(None, [f"run.root={root}", *extra])


def _version(reg, cfg, payload: str, tags=None) -> str:
    """A real MLflow run holding a model file, registered as a new version; returns its number."""
    c = reg.client
    exp = tracking.experiment_id(c, "registry-test", tracking.artifact_root(cfg))
    run = c.create_run(exp)
    c.log_text(run.info.run_id, payload, "model_files/model.pt")
    src = c.get_run(run.info.run_id).info.artifact_uri + "/model_files"
    return str(promotion.register(reg, run.info.run_id, tags or {"macro_f1": payload}, source=src).version)


# ----------------------------------------------------------------- round trip
def test_promote_rollback_through_aliases(tmp_path):
    cfg = _cfg(tmp_path / "runs")
    reg = promotion.open_registry(cfg)
    assert promotion.aliases(reg) == {} and promotion.production(reg) is None
    v1, v2, v3 = (_version(reg, cfg, p) for p in ("one", "two", "three"))
    assert (v1, v2, v3) == ("1", "2", "3")
    assert promotion.aliases(reg) == {}                       # registering promotes nothing

    assert promotion.promote(reg, v1, "first model", expected=None) is None
    assert promotion.promote(reg, v2, "better", expected=v1) == v1
    assert promotion.aliases(reg) == {"production": v2, "previous": v1}
    assert promotion.promote(reg, v3, "better again", expected=v2) == v2
    assert promotion.aliases(reg) == {"production": v3, "previous": v2}
    mv = promotion.production(reg)
    assert mv.tags["replaced"] == v2 and mv.tags["promote_reason"] == "better again"
    # the version's source is the run's model: what models:/imbalance@production resolves to
    local = reg.client.download_artifacts(mv.run_id, "model_files", str(tmp_path / "dl"))
    assert (Path(local) / "model.pt").read_text() == "three"

    assert promotion.rollback(reg, "bad in prod") == v2
    assert promotion.aliases(reg) == {"production": v2, "previous": v1}
    assert reg.client.get_model_version(reg.name, v3).tags["rollback_reason"] == "bad in prod"
    assert promotion.rollback(reg) == v1
    assert promotion.aliases(reg) == {"production": v1}
    with pytest.raises(InputError, match="no earlier production version"):
        promotion.rollback(reg)
    assert promotion.aliases(reg) == {"production": v1}

    # a fresh client over the same store sees the same state (everything is in MLflow)
    again = promotion.open_registry(_cfg(tmp_path / "runs"))
    assert promotion.production(again).version in (1, "1")
    assert [str(m.version) for m in promotion.versions(again)] == ["1", "2", "3"]


def test_promotion_is_compare_and_set(tmp_path):
    cfg = _cfg(tmp_path / "runs")
    reg = promotion.open_registry(cfg)
    v1, v2, v3 = (_version(reg, cfg, p) for p in ("a", "b", "c"))
    promotion.promote(reg, v1, "first", expected=None)
    promotion.promote(reg, v2, "judged against 1", expected=v1)
    with pytest.raises(promotion.ProductionMoved, match="production moved from 1 to 2"):
        promotion.promote(reg, v3, "judged against 1 too", expected=v1)
    assert promotion.aliases(reg) == {"production": v2, "previous": v1}     # nothing moved
    assert "replaced" not in reg.client.get_model_version(reg.name, v3).tags
    with pytest.raises(promotion.ProductionMoved, match="from none to 2"):
        promotion.promote(reg, v3, "thought it was the first", expected=None)


def test_bad_input(tmp_path):
    cfg = _cfg(tmp_path / "runs")
    reg = promotion.open_registry(cfg)
    with pytest.raises(InputError, match="no registered model named imbalance"):
        promotion.versions(reg)
    v1 = _version(reg, cfg, "a")
    with pytest.raises(InputError, match="has no version 9"):
        promotion.promote(reg, "9", "unknown")
    with pytest.raises(InputError, match="needs a reason"):
        promotion.promote(reg, v1, " ")
    with pytest.raises(InputError, match="no production version to roll back"):
        promotion.rollback(reg)
    with pytest.raises(InputError, match="no MLflow store"):
        promotion.open_registry(_cfg(tmp_path / "elsewhere"), must_exist=True)
    assert promotion.aliases(reg) == {}


# ---------------------------------------------------------------- processes
def _wait_for(path: Path, proc, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.is_alive(), "child died early"
        assert time.monotonic() < deadline, "child did not start"
        time.sleep(0.05)


def _kill(proc) -> None:
    """SIGKILL a child (if still running) and reap it, so a failing test leaves nothing behind."""
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)


def _racer(root: str, idx: int, n: int, flags: str, out: str) -> None:
    """One retrain's registry edge: read production, (train), register, promote against what was read."""
    cfg = _cfg(Path(root), "registry.lock_timeout=120")
    reg = promotion.open_registry(cfg)
    seen = promotion.production(reg)
    expected = str(seen.version) if seen else None
    Path(flags, f"read{idx}").write_text("ok")
    while len(list(Path(flags).glob("read*"))) < n:    # every racer judged against the same production
        time.sleep(0.02)
    v = _version(reg, cfg, f"racer {idx}")
    try:
        promotion.promote(reg, v, f"racer {idx}", expected=expected)
        result = "promoted"
    except promotion.ProductionMoved:
        result = "superseded"
    Path(out).write_text(json.dumps({"version": v, "result": result, "expected": expected}))


def test_racing_retrains_never_both_promote(tmp_path):
    """Real processes that all judged against the same production race to promote: exactly one wins."""
    root = tmp_path / "runs"
    cfg = _cfg(root)
    reg = promotion.open_registry(cfg)
    v0 = _version(reg, cfg, "seed")
    promotion.promote(reg, v0, "seed", expected=None)
    ctx = mp.get_context("spawn")
    n = 3
    flags = tmp_path / "flags"
    flags.mkdir()
    procs = [ctx.Process(target=_racer, args=(str(root), i, n, str(flags), str(tmp_path / f"out{i}.json")))
             for i in range(n)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(240)
    finally:
        for p in procs:
            _kill(p)
    assert [p.exitcode for p in procs] == [0] * n
    outs = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(n)]
    assert all(o["expected"] == v0 for o in outs)
    winners = [o["version"] for o in outs if o["result"] == "promoted"]
    assert len(winners) == 1
    assert promotion.aliases(reg) == {"production": winners[0], "previous": v0}
    assert len({o["version"] for o in outs}) == n           # every racer got its own version


def _hold_lock(root: str, started: str) -> None:
    reg = promotion.open_registry(_cfg(Path(root)))
    with promotion.lock(reg):
        Path(started).write_text("locked")
        time.sleep(600)


def test_killed_holder_does_not_leave_the_registry_locked(tmp_path):
    root = tmp_path / "runs"
    cfg = _cfg(root)
    reg = promotion.open_registry(cfg)
    v1 = _version(reg, cfg, "a")
    flag = tmp_path / "locked"
    q = mp.get_context("spawn").Process(target=_hold_lock, args=(str(root), str(flag)))
    q.start()
    try:
        _wait_for(flag, q)
        blocked = promotion.open_registry(_cfg(root, "registry.lock_timeout=0.3"))
        with pytest.raises(promotion.RegistryLockTimeout, match=rf"locked by another process \(pid {q.pid} on"):
            promotion.promote(blocked, v1, "while locked")
        assert promotion.aliases(blocked) == {}              # reads do not need the lock
    finally:
        _kill(q)
    assert q.exitcode == -signal.SIGKILL
    fast = promotion.open_registry(_cfg(root, "registry.lock_timeout=5"))
    assert promotion.promote(fast, v1, "after the holder died") is None
    assert promotion.aliases(fast) == {"production": v1}


# ---------------------------------------------------------------- commands
def test_registry_commands(tmp_path, capsys):
    root = tmp_path / "runs"
    cfg = _cfg(root)
    reg = promotion.open_registry(cfg)
    v1, v2 = _version(reg, cfg, "0.5000"), _version(reg, cfg, "0.6000")
    at = ["registry", "--set", f"run.root={root}"]
    assert main([*at, "promote", v1, "--reason", "ops"]) == 0
    assert main([*at, "promote", v2, "--reason", "ops"]) == 0
    assert main([*at, "rollback"]) == 0
    capsys.readouterr()
    assert main([*at, "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("*    1") and "macro_f1=0.5000" in out[0] and "aliases=production" in out[0]
    assert out[1].startswith("     2") and "replaced=1" in out[1]
    assert main([*at, "show", v2]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["tags"]["rollback_reason"] == "manual rollback" and shown["run_id"]
    assert main([*at, "promote", "42", "--reason", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no version 42" in err[0]
    assert main([*at, "--model", "nope", "list"]) == 2
    assert "no registered model named nope" in capsys.readouterr().err
    assert main(["registry", "--set", f"run.root={tmp_path / 'wrong'}", "list"]) == 2
    assert not (tmp_path / "wrong").exists()                 # no empty store made by a typo
    assert promotion.aliases(reg) == {"production": v1}


def test_bad_config_leaves_the_registry_untouched(tmp_path, capsys):
    """``imbalance retrain`` with a bad config stops before the registry or the lake is read."""
    root = tmp_path / "runs"
    cfg = _cfg(root)
    reg = promotion.open_registry(cfg)
    v1 = _version(reg, cfg, "a")
    promotion.promote(reg, v1, "first", expected=None)
    lake = tmp_path / "lake" / "ingest_date=2026-11-01"
    lake.mkdir(parents=True)
    (lake / "part-0.parquet").write_bytes(b"not read")
    before = sorted(p.name for p in root.iterdir())
    capsys.readouterr()
    conf = tmp_path / "retrain.yaml"
    conf.write_text("retrain:\n  partition_col: ingest_date\n")
    base = ["retrain", str(conf), f"run.root={root}", f"retrain.lake={tmp_path / 'lake'}"]
    for bad, says in ((["retrain.tolerance=-0.5"], "retrain.tolerance must be a number >= 0"),
                      (["registry.model_name=a/b"], "registry.model_name"),
                      (["tracking.enabled=false"], "tracking must be on"),
                      ([f"registry.root={tmp_path / 'old'}"], "registry.root' is gone")):
        assert main(base + bad) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert sorted(p.name for p in root.iterdir()) == before   # no run directory, no new store files
    assert promotion.aliases(reg) == {"production": v1}
    assert [str(m.version) for m in promotion.versions(reg)] == [v1]
