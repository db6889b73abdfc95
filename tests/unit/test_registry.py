"""The file-based model registry (real files, real processes, real flock) and the promotion gate."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from pipeline.flows import registry as regmod
from pipeline.errors import InputError
from pipeline.flows.registry import ModelRegistry, RegistryLockTimeout, gate, minority_classes_from


def make_model(path: Path, payload: bytes = b"weights", n_files: int = 2) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.pt").write_bytes(payload)
    (path / "sub").mkdir(exist_ok=True)
    for i in range(n_files - 1):
        (path / "sub" / f"part{i}.bin").write_bytes(payload * (i + 2))
    return path


def metrics(f1: float, recalls: dict) -> dict:
    """A metrics.json-shaped dict: macro.f1 and a per-class list with label/support/recall."""
    return {"macro": {"f1": f1},
            "per_class": [{"label": k, "support": s, "recall": r} for k, (s, r) in recalls.items()]}


# ----------------------------------------------------------------- round trip
def test_register_promote_rollback_round_trip(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    assert reg.list_versions() == [] and reg.production() is None

    m1 = make_model(tmp_path / "m1", b"one")
    v1 = reg.register(m1, metrics(0.5, {0: (10, 0.4)}), {"train": {"epochs": 1}}, "fp-a",
                      notes={"partitions": ["2024-01-01"]})
    assert v1 == "v0001"
    got = reg.get(v1)
    assert (got.model_dir / "model.pt").read_bytes() == b"one"
    assert (got.model_dir / "sub" / "part0.bin").read_bytes() == b"oneone"
    assert got.metrics["macro"]["f1"] == 0.5
    assert got.config == {"train": {"epochs": 1}}
    assert got.data_fingerprint == "fp-a"
    assert got.info["notes"] == {"partitions": ["2024-01-01"]}
    assert got.parent is None
    assert reg.verify(v1) == []

    assert reg.promote(v1, "first model") is None
    assert reg.production() == v1

    v2 = reg.register(make_model(tmp_path / "m2", b"two"), metrics(0.6, {}), {}, "fp-b")
    assert v2 == "v0002" and reg.get(v2).parent == v1
    assert reg.production() == v1  # registering does not promote
    assert reg.promote(v2, "better") == v1
    v3 = reg.register(make_model(tmp_path / "m3", b"three"), metrics(0.7, {}), {}, "fp-c")
    reg.promote(v3, "better again")
    assert reg.list_versions() == ["v0001", "v0002", "v0003"]

    assert reg.rollback("bad in prod") == v2
    assert reg.production() == v2
    assert reg.rollback() == v1
    with pytest.raises(InputError, match="no earlier production version"):
        reg.rollback()
    assert reg.production() == v1

    hist = reg.history()
    assert [(e["action"], e["version"], e["previous"]) for e in hist] == [
        ("promote", v1, None), ("promote", v2, v1), ("promote", v3, v2),
        ("rollback", v2, v3), ("rollback", v1, v2)]
    assert hist[0]["reason"] == "first model" and hist[3]["reason"] == "bad in prod"

    # a fresh object over the same directory sees the same state (everything is on disk)
    again = ModelRegistry(tmp_path / "reg")
    assert again.production() == v1 and again.list_versions() == ["v0001", "v0002", "v0003"]
    # the source model dir may change later; the registered copy does not
    (m1 / "model.pt").write_bytes(b"changed")
    assert (again.get(v1).model_dir / "model.pt").read_bytes() == b"one"


def test_config_dataclass_is_stored_as_dict(tmp_path):
    from pipeline.config import load_config

    cfg = load_config(None, ["train.epochs=7"])
    reg = ModelRegistry.from_config(cfg.registry.__class__(root=str(tmp_path / "r"), lock_timeout=5))
    v = reg.register(make_model(tmp_path / "m"), {"macro": {"f1": 0.1}, "classes": []}, cfg, "fp")
    assert reg.get(v).config["train"]["epochs"] == 7
    assert reg.lock_timeout == 5


def test_bad_input(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    with pytest.raises(InputError, match="does not exist"):
        reg.register(tmp_path / "nope", {}, {}, "fp")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="is empty"):
        reg.register(tmp_path / "empty", {}, {}, "fp")
    m = make_model(tmp_path / "m")
    with pytest.raises(InputError, match="metrics is not JSON"):
        reg.register(m, {"x": object()}, {}, "fp")
    with pytest.raises(InputError, match="data_fingerprint"):
        reg.register(m, {}, {}, "")
    with pytest.raises(InputError, match="unknown version v0009"):
        reg.get("v0009")
    with pytest.raises(InputError, match="not a version id"):
        reg.get("../etc")
    with pytest.raises(InputError, match="unknown version"):
        reg.promote("v0001", "nothing registered")
    with pytest.raises(InputError, match="needs a reason"):
        reg.promote("v0001", " ")
    with pytest.raises(InputError, match="no earlier"):
        reg.rollback()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        ModelRegistry(tmp_path / "afile")
    with pytest.raises(InputError, match="local or mounted"):
        ModelRegistry("s3a://bucket/registry")
    assert reg.list_versions() == []  # nothing half-made by the failures


def test_damaged_pointer_is_a_clear_error(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    reg.promote(reg.register(make_model(tmp_path / "m"), {}, {}, "fp"), "first")
    (reg.root / "production").write_text('{"version": ')
    with pytest.raises(InputError, match="pointer .* is damaged"):
        reg.production()


def test_verify_detects_tampering(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    v = reg.register(make_model(tmp_path / "m"), {}, {}, "fp")
    (reg.get(v).model_dir / "model.pt").write_bytes(b"tampered")
    (reg.get(v).model_dir / "extra").write_bytes(b"x")
    problems = reg.verify(v)
    assert any("model.pt differs" in p for p in problems)
    assert any("unexpected file extra" in p for p in problems)


# ------------------------------------------------------------------- crashes
def test_failed_copy_leaves_no_partial_version(tmp_path, monkeypatch):
    reg = ModelRegistry(tmp_path / "reg")
    v1 = reg.register(make_model(tmp_path / "ok"), {}, {}, "fp")
    reg.promote(v1, "first")

    real_copy = regmod._copy_file
    calls = []

    def failing_copy(src, dst):
        calls.append(src)
        if len(calls) == 2:  # the first file is copied, the second fails: a half-done copy
            raise OSError(28, "No space left on device")
        return real_copy(src, dst)

    monkeypatch.setattr(regmod, "_copy_file", failing_copy)
    with pytest.raises(OSError, match="No space left"):
        reg.register(make_model(tmp_path / "big", n_files=4), {}, {}, "fp2")
    assert len(calls) >= 2  # copytree went on past the failure, then raised: a real partial copy
    assert reg.list_versions() == [v1] and reg.production() == v1
    assert list((reg.root / "versions").iterdir()) == [reg.root / "versions" / v1]
    assert list((reg.root / ".staging").iterdir()) == []  # cleaned up
    monkeypatch.setattr(regmod, "_copy_file", real_copy)
    assert reg.register(make_model(tmp_path / "big"), {}, {}, "fp2") == "v0002"


def _register_then_hang(root: str, model: str, started: str) -> None:
    """Child process: register, but stall forever inside the copy (the parent SIGKILLs it)."""
    real = regmod._copy_file

    def slow(src, dst):
        out = real(src, dst)
        Path(started).write_text("copying")
        time.sleep(600)
        return out

    regmod._copy_file = slow
    ModelRegistry(root).register(model, {}, {}, "fp")


def _hold_lock(root: str, started: str) -> None:
    reg = ModelRegistry(root)
    with reg.lock():
        Path(started).write_text("locked")
        time.sleep(600)


def _kill(proc) -> None:
    """SIGKILL a child (if still running) and reap it, so a failing test leaves nothing behind."""
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)


def _wait_for(path: Path, proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.is_alive(), "child died early"
        assert time.monotonic() < deadline, "child did not start"
        time.sleep(0.05)


def test_killed_register_leaves_no_version_and_no_lock(tmp_path):
    ctx = mp.get_context("spawn")
    root = tmp_path / "reg"
    model = make_model(tmp_path / "m", n_files=3)
    flag = tmp_path / "started"
    p = ctx.Process(target=_register_then_hang, args=(str(root), str(model), str(flag)))
    p.start()
    try:
        _wait_for(flag, p)
    finally:
        _kill(p)
    assert p.exitcode == -signal.SIGKILL
    reg = ModelRegistry(root, lock_timeout=5)
    assert reg.list_versions() == []
    assert len(list((root / ".staging").iterdir())) == 1  # left behind, invisible to readers
    assert reg.register(model, {}, {}, "fp") == "v0001"

    # a process killed while holding the lock does not leave the registry locked
    flag2 = tmp_path / "locked"
    q = ctx.Process(target=_hold_lock, args=(str(root), str(flag2)))
    q.start()
    try:
        _wait_for(flag2, q)
        blocked = ModelRegistry(root, lock_timeout=0.3)
        with pytest.raises(RegistryLockTimeout, match=rf"locked by another process \(pid {q.pid} on"):
            blocked.promote("v0001", "while locked")
        assert blocked.production() is None  # reads do not need the lock
    finally:
        _kill(q)
    reg.promote("v0001", "after the holder died")
    assert reg.production() == "v0001"


def test_stale_staging_is_swept(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    reg.register(make_model(tmp_path / "m"), {}, {}, "fp")
    old = reg.root / ".staging" / "deadbeef-1"
    (old / "model").mkdir(parents=True)
    fresh = reg.root / ".staging" / "cafe-2"
    fresh.mkdir()
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    reg.register(make_model(tmp_path / "m"), {}, {}, "fp")
    assert not old.exists() and fresh.exists()


# ----------------------------------------------------------------- concurrency
def _worker(root: str, model_root: str, idx: int, n: int, out: str) -> None:
    reg = ModelRegistry(root, lock_timeout=120)
    got = []
    for j in range(n):
        m = make_model(Path(model_root) / f"w{idx}-{j}", payload=f"{idx}-{j}".encode() * 50, n_files=3)
        v = reg.register(m, {"macro": {"f1": idx + j / 10}}, {"worker": idx, "j": j}, f"fp-{idx}-{j}")
        reg.promote(v, f"worker {idx} round {j}")
        assert reg.production() is not None
        got.append(v)
        if j % 2 == 1:
            try:
                reg.rollback(f"worker {idx} rollback")
            except InputError:
                pass
    Path(out).write_text(json.dumps(got))


def test_concurrent_registers_and_promotions_stay_consistent(tmp_path):
    ctx = mp.get_context("spawn")
    root = tmp_path / "reg"
    n_workers, n_each = 4, 4
    procs = [ctx.Process(target=_worker, args=(str(root), str(tmp_path / "models"), i, n_each,
                                               str(tmp_path / f"out{i}.json")))
             for i in range(n_workers)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(180)
    finally:
        for p in procs:
            _kill(p)
    assert [p.exitcode for p in procs] == [0] * n_workers

    got = [v for i in range(n_workers) for v in json.loads((tmp_path / f"out{i}.json").read_text())]
    total = n_workers * n_each
    assert len(set(got)) == total  # every register got its own id
    reg = ModelRegistry(root)
    assert reg.list_versions() == [f"v{i:04d}" for i in range(1, total + 1)]  # dense, monotonic
    for i in range(n_workers):
        mine = json.loads((tmp_path / f"out{i}.json").read_text())
        assert mine == sorted(mine)  # increasing within each process
    for v in reg.list_versions():
        mv = reg.get(v)
        assert reg.verify(v) == []
        w, j = mv.config["worker"], mv.config["j"]  # each version holds the model it was given
        assert (mv.model_dir / "model.pt").read_bytes() == f"{w}-{j}".encode() * 50
        assert mv.data_fingerprint == f"fp-{w}-{j}"
    assert list((root / ".staging").iterdir()) == []

    # the audit log replays to the pointer: promote pushes, rollback pops
    hist = reg.history()
    assert sum(e["action"] == "promote" for e in hist) == total
    stack: list = []
    for e in hist:
        assert e["previous"] == (stack[-1] if stack else None)
        if e["action"] == "promote":
            stack.append(e["version"])
        else:
            stack.pop()
            assert e["version"] == stack[-1]
    ptr = json.loads((root / "production").read_text())
    assert ptr["stack"] == stack and reg.production() == stack[-1]
    assert reg.production() in reg.list_versions()


def test_pointer_always_names_a_complete_version(tmp_path):
    """A reader polling while another process registers and promotes never sees a torn pointer
    or a pointer to a version that is not complete."""
    ctx = mp.get_context("spawn")
    root = tmp_path / "reg"
    reg = ModelRegistry(root)
    reg.promote(reg.register(make_model(tmp_path / "m0"), {}, {}, "fp"), "seed")
    p = ctx.Process(target=_worker, args=(str(root), str(tmp_path / "models"), 1, 6,
                                          str(tmp_path / "out.json")))
    p.start()
    seen = set()
    try:
        while p.is_alive() or not seen:
            v = reg.production()  # json.load would raise on a torn file
            mv = reg.get(v)
            assert (mv.model_dir / "model.pt").is_file()
            assert reg.verify(v) == []
            seen.add(v)
    finally:
        p.join(120)
        _kill(p)
    assert p.exitcode == 0
    assert len(seen) >= 1


def test_lock_is_reentrant_within_one_object(tmp_path):
    reg = ModelRegistry(tmp_path / "reg", lock_timeout=0.5)
    v = reg.register(make_model(tmp_path / "m"), {}, {}, "fp")
    with reg.lock():
        reg.promote(v, "inside an outer lock")  # would time out if the lock were not re-entrant
        other = ModelRegistry(tmp_path / "reg", lock_timeout=0.2)
        with pytest.raises(RegistryLockTimeout):
            other.promote(v, "blocked")
    other.promote(v, "free again")


# ------------------------------------------------------------------------ gate
def test_gate_first_model_passes():
    ok, reasons = gate(metrics(0.1, {0: (5, 0.0)}), None, 0.01, 0.02, [0])
    assert ok and "no production" in reasons[0]


def test_gate_hand_computed_cases():
    prod = metrics(0.80, {"a": (100, 0.90), "b": (10, 0.50), "c": (5, 0.30), "d": (3, None)})
    minority = ["b", "c", "d"]
    # production minority mean over b, c (d has no recall): (0.5 + 0.3) / 2 = 0.40

    # F1 0.795 >= 0.80 - 0.01; minority mean (0.48 + 0.30)/2 = 0.39 >= 0.40 - 0.02 -> pass
    ok, reasons = gate(metrics(0.795, {"a": (100, 0.9), "b": (10, 0.48), "c": (5, 0.30), "d": (3, 0.2)}),
                       prod, 0.01, 0.02, minority)
    assert ok, reasons
    assert "0.3900" in reasons[1] and "0.4000" in reasons[1] and "over 2 minority classes" in reasons[1]

    # F1 0.785 < 0.79 -> fail on F1 only
    ok, reasons = gate(metrics(0.785, {"b": (10, 0.5), "c": (5, 0.3)}), prod, 0.01, 0.02, minority)
    assert not ok and reasons[0].startswith("macro-F1 worse") and reasons[1].startswith("minority recall ok")

    # F1 fine but minority mean (0.40 + 0.30)/2 = 0.35 < 0.38 -> fail on recall only
    ok, reasons = gate(metrics(0.85, {"b": (10, 0.40), "c": (5, 0.30)}), prod, 0.01, 0.02, minority)
    assert not ok and reasons[0].startswith("macro-F1 ok") and reasons[1].startswith("minority recall worse")

    # exactly at the tolerance passes (float-safe): 0.79 vs 0.80 - 0.01; 0.38 vs 0.40 - 0.02
    ok, reasons = gate(metrics(0.79, {"b": (10, 0.46), "c": (5, 0.30)}), prod, 0.01, 0.02, minority)
    assert ok, reasons

    # a class absent from the candidate's test split (null recall) is left out of both means:
    # over c only: candidate 0.29 vs production 0.30 - 0.02 -> pass; reasons name the class
    ok, reasons = gate(metrics(0.80, {"b": (0, None), "c": (5, 0.29)}), prod, 0.01, 0.02, minority)
    assert ok and "left out: b, d" in reasons[1]

    # zero tolerance: any drop fails
    ok, _ = gate(metrics(0.7999, {"b": (10, 0.5), "c": (5, 0.3)}), prod, 0.0, 0.0, minority)
    assert not ok

    # no minority class with a recall in both -> recall check skipped, F1 decides
    ok, reasons = gate(metrics(0.80, {"d": (3, 0.0)}), prod, 0.01, 0.02, ["d"])
    assert ok and "skipped" in reasons[1]


def test_gate_labels_match_across_int_and_str():
    prod = metrics(0.5, {0: (50, 0.9), 1: (5, 0.6)})
    ok, reasons = gate(metrics(0.5, {0: (50, 0.9), 1: (5, 0.3)}), prod, 0.01, 0.1, ["1"])
    assert not ok and "worse" in reasons[1]


def test_gate_derives_minority_classes_from_support():
    # supports 60, 25, 10, 5 (total 100): smallest classes with total <= 50 are 5, 10, 25 -> labels 3, 2, 1
    cand = metrics(0.7, {0: (60, 0.9), 1: (25, 0.8), 2: (10, 0.5), 3: (5, 0.2)})
    assert minority_classes_from(cand) == [3, 2, 1]
    prod = metrics(0.7, {0: (60, 0.1), 1: (25, 0.8), 2: (10, 0.5), 3: (5, 0.5)})
    # mean over 1,2,3: candidate 0.5, production 0.6 -> fails with tolerance 0.05 (class 0 ignored)
    ok, reasons = gate(cand, prod, 0.01, 0.05)
    assert not ok and "over 3 minority classes" in reasons[1]


def test_gate_bad_input():
    good = metrics(0.5, {0: (1, 0.5)})
    with pytest.raises(InputError, match="candidate metrics have no macro.f1"):
        gate({"classes": []}, good, 0.01, 0.02, [0])
    with pytest.raises(InputError, match="production macro.f1 is None"):
        gate(good, {"macro": {"f1": None}, "classes": []}, 0.01, 0.02, [0])
    with pytest.raises(InputError, match="tolerance must be a number >= 0"):
        gate(good, good, -0.1, 0.02, [0])
    with pytest.raises(InputError, match="no per-class list"):
        gate(good, {"macro": {"f1": 0.5}}, 0.01, 0.02, [0])


def test_operator_cli(tmp_path, capsys):
    root = str(tmp_path / "reg")
    reg = ModelRegistry(root)
    v1 = reg.register(make_model(tmp_path / "m"), metrics(0.5, {}), {}, "fp")
    v2 = reg.register(make_model(tmp_path / "m"), metrics(0.6, {}), {}, "fp")
    assert regmod.main([root, "promote", v1, "--reason", "ops"]) == 0
    assert regmod.main([root, "promote", v2, "--reason", "ops"]) == 0
    assert regmod.main([root, "rollback"]) == 0
    capsys.readouterr()
    assert regmod.main([root, "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"* {v1}") and "macro_f1=0.5000" in out[0] and out[1].startswith(f"  {v2}")
    assert regmod.main([root, "promote", "v0042", "--reason", "x"]) == 2
    assert "unknown version v0042" in capsys.readouterr().err
