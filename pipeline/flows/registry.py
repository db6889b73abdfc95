"""A file-based model registry on a local or mounted shared directory, and the promotion gate.

Layout under ``root``::

    versions/v0001/model/...        an immutable copy of the registered model directory
    versions/v0001/version.json     metrics, config, data fingerprint, notes, created time,
                                    parent version (production when it was registered),
                                    and a size + SHA-256 manifest of the model files
    production                      the pointer: JSON {"version": ..., "stack": [...], ...}
    promotions.jsonl                audit log, one JSON line per promote / rollback
    .lock                           fcntl.flock lock file (holder's pid/host written inside)
    .staging/                       in-progress copies, invisible to readers

Why it is safe to use from several retrains at once:

* ``register`` copies the model into ``.staging/`` *outside* the lock (copies can be large),
  then, holding the lock, allocates the next version id (max + 1, so ids are monotonic and
  unique), writes ``version.json`` and renames the staging directory to ``versions/<id>``. A
  rename is atomic, so a version is either absent or complete; a crash leaves at most a
  staging directory that readers never look at (swept after a day).
* ``promote`` / ``rollback`` hold the same lock and replace the ``production`` pointer with
  ``os.replace`` of a fully written temp file, so readers always see an old or a new pointer,
  never a torn one, and the pointer only ever names a complete version.
* The lock is ``fcntl.flock`` on ``root/.lock``: the kernel releases it when the holder dies,
  so a killed retrain never leaves the registry locked. On NFS, Linux maps flock to POSIX
  byte-range locks (NFSv4 supports them); object-store FUSE mounts without locking are not
  supported.

The pointer holds a stack of past production versions, so ``rollback`` returns to the version
that was production before the current one (and again, to the one before that).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from pipeline.errors import InputError
from pipeline.io import json_default

VERSION_RE = re.compile(r"^v(\d{4,})$")
POINTER = "production"
AUDIT = "promotions.jsonl"
LOCK = ".lock"
STAGING = ".staging"
VERSIONS = "versions"
STALE_STAGING_S = 24 * 3600.0


class RegistryLockTimeout(TimeoutError):
    """Another process held the registry lock for longer than the configured timeout."""


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """One registered version: its id, directory, model files directory and ``version.json``."""

    version: str
    path: Path
    info: dict

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def metrics(self) -> dict:
        return self.info["metrics"]

    @property
    def config(self) -> dict:
        return self.info["config"]

    @property
    def data_fingerprint(self) -> str:
        return self.info["data_fingerprint"]

    @property
    def parent(self) -> Optional[str]:
        return self.info.get("parent")

    @property
    def created_at(self) -> str:
        return self.info["created_at"]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _version_id(n: int) -> str:
    return f"v{n:04d}"


def _copy_file(src: str, dst: str) -> str:
    """Copy one model file (module-level so a test can make it fail part-way)."""
    return shutil.copy2(src, dst)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest(model_dir: Path) -> dict:
    """``{relative path: {size, sha256}}`` of every file under ``model_dir``."""
    out = {}
    for root, dirs, files in os.walk(model_dir):
        dirs.sort()
        for name in sorted(files):
            p = Path(root) / name
            out[str(p.relative_to(model_dir))] = {"size": p.stat().st_size, "sha256": _sha256(p)}
    return out


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_durable(path: Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path``, fsync it, and ``os.replace`` it into place."""
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _to_plain(obj: Any, what: str) -> dict:
    """A JSON-serialisable dict from a dict or a (config) dataclass; InputError otherwise."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
    if not isinstance(obj, dict):
        raise InputError(f"registry: {what} must be a dict, not {type(obj).__name__}")
    try:
        return json.loads(json.dumps(obj, default=json_default))
    except (TypeError, ValueError) as e:
        raise InputError(f"registry: {what} is not JSON-serialisable: {e}") from None


class ModelRegistry:
    """File-based model registry rooted at ``root`` (created on first use).

    ``lock_timeout`` is how long register/promote/rollback wait for another process holding
    the lock before raising :class:`RegistryLockTimeout`.
    """

    def __init__(self, root: str | os.PathLike, lock_timeout: float = 600.0):
        s = str(root)
        if "://" in s and not s.startswith("file://"):
            raise InputError(f"registry root must be a local or mounted directory, not {s}")
        self.root = Path(s[len("file://"):] if s.startswith("file://") else s)
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"registry root {self.root} exists and is not a directory")
        self.lock_timeout = float(lock_timeout)
        self._tlock = threading.RLock()
        self._depth = 0
        self._fd: Optional[int] = None

    @classmethod
    def from_config(cls, section: Any) -> "ModelRegistry":
        """Build from a :class:`pipeline.config.RegistrySection`."""
        return cls(section.root, lock_timeout=getattr(section, "lock_timeout", 600.0))

    # ------------------------------------------------------------------ paths
    @property
    def versions_dir(self) -> Path:
        return self.root / VERSIONS

    def _ensure(self) -> None:
        (self.root / VERSIONS).mkdir(parents=True, exist_ok=True)
        (self.root / STAGING).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------- lock
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the registry's exclusive lock (re-entrant within this object)."""
        with self._tlock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._ensure()
            path = self.root / LOCK
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            deadline = time.monotonic() + self.lock_timeout
            wait = 0.01
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except OSError as e:
                        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                            raise
                    if time.monotonic() >= deadline:
                        raise RegistryLockTimeout(
                            f"registry {self.root} is locked by another process "
                            f"({self._holder(path)}); gave up after {self.lock_timeout:g} s "
                            f"(registry.lock_timeout)")
                    time.sleep(wait)
                    wait = min(wait * 2, 0.5)
            except BaseException:
                os.close(fd)
                raise
            try:
                holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": _now()})
                os.ftruncate(fd, 0)
                os.pwrite(fd, holder.encode() + b"\n", 0)
            except OSError:
                pass
            self._fd, self._depth = fd, 1
            try:
                yield
            finally:
                self._depth, self._fd = 0, None
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    @staticmethod
    def _holder(path: Path) -> str:
        try:
            h = json.loads(path.read_text() or "{}")
            return f"pid {h['pid']} on {h['host']} since {h['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    # -------------------------------------------------------------- versions
    def _existing_numbers(self) -> list[int]:
        if not self.versions_dir.is_dir():
            return []
        return sorted(int(m.group(1)) for m in (VERSION_RE.match(p.name) for p in self.versions_dir.iterdir())
                      if m and (self.versions_dir / m.group(0) / "version.json").is_file())

    def list_versions(self) -> list[str]:
        """Ids of every complete registered version, oldest first."""
        return [_version_id(n) for n in self._existing_numbers()]

    def latest(self) -> Optional[str]:
        """The most recently registered version, or None."""
        v = self.list_versions()
        return v[-1] if v else None

    def get(self, version: str) -> ModelVersion:
        """A registered version; InputError when the id is malformed or not registered."""
        if not isinstance(version, str) or not VERSION_RE.match(version):
            raise InputError(f"registry {self.root}: {version!r} is not a version id (like v0001)")
        path = self.versions_dir / version
        info_path = path / "version.json"
        if not info_path.is_file():
            known = self.list_versions()
            hint = f"known: {', '.join(known[-5:])}" if known else "the registry is empty"
            raise InputError(f"registry {self.root}: unknown version {version} ({hint})")
        with open(info_path) as f:
            info = json.load(f)
        return ModelVersion(version=version, path=path, info=info)

    def verify(self, version: str) -> list[str]:
        """Problems with a version's files against its manifest (empty list: intact)."""
        mv = self.get(version)
        problems = []
        expected = mv.info.get("files", {})
        actual = _manifest(mv.model_dir) if mv.model_dir.is_dir() else {}
        for name, meta in expected.items():
            if name not in actual:
                problems.append(f"{version}: missing file {name}")
            elif actual[name] != meta:
                problems.append(f"{version}: file {name} differs from its manifest")
        for name in actual.keys() - expected.keys():
            problems.append(f"{version}: unexpected file {name}")
        return problems

    def register(self, model_dir: str | os.PathLike, metrics: dict, config: Any,
                 data_fingerprint: str, notes: Optional[dict] = None) -> str:
        """Copy ``model_dir`` into a new version and return its id (``v0001``, ``v0002``…).

        The copy goes to a staging directory first; the version id is allocated and the
        directory renamed into ``versions/`` under the lock, so a crash at any point leaves no
        partial version visible and concurrent registers get distinct, increasing ids.
        ``parent`` records the production version at the time of registration.
        """
        src = Path(str(model_dir))
        if not src.is_dir():
            raise InputError(f"registry: model directory {src} does not exist or is not a directory")
        if not any(src.iterdir()):
            raise InputError(f"registry: model directory {src} is empty")
        if not isinstance(data_fingerprint, str) or not data_fingerprint:
            raise InputError("registry: data_fingerprint must be a non-empty string")
        metrics_p = _to_plain(metrics, "metrics")
        config_p = _to_plain(config, "config")
        notes_p = _to_plain(notes or {}, "notes")

        self._ensure()
        self._sweep_staging()
        staging = self.root / STAGING / f"{uuid.uuid4().hex}-{os.getpid()}"
        try:
            shutil.copytree(src, staging / "model", copy_function=_copy_file)
            files = _manifest(staging / "model")
            with self.lock():
                n = max(self._existing_numbers() + [self._highest_ever()]) + 1
                version = _version_id(n)
                info = {
                    "version": version,
                    "created_at": _now(),
                    "parent": self.production(),
                    "source": str(src.resolve()),
                    "metrics": metrics_p,
                    "config": config_p,
                    "data_fingerprint": data_fingerprint,
                    "notes": notes_p,
                    "files": files,
                    "created_by": {"pid": os.getpid(), "host": socket.gethostname()},
                }
                _write_durable(staging / "version.json", json.dumps(info, indent=2) + "\n")
                os.rename(staging, self.versions_dir / version)
                _fsync_dir(self.versions_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return version

    def _highest_ever(self) -> int:
        """Highest version number named in the audit log (ids are never reused)."""
        best = 0
        for e in self.history():
            for key in ("version", "previous"):
                m = VERSION_RE.match(str(e.get(key) or ""))
                if m:
                    best = max(best, int(m.group(1)))
        return best

    def _sweep_staging(self, older_than_s: float = STALE_STAGING_S) -> None:
        """Remove staging directories left by crashed registers (older than a day)."""
        cutoff = time.time() - older_than_s
        for p in (self.root / STAGING).iterdir():
            with contextlib.suppress(OSError):
                if p.stat().st_mtime < cutoff:
                    shutil.rmtree(p, ignore_errors=True)

    # ------------------------------------------------------------ production
    def _pointer(self) -> Optional[dict]:
        p = self.root / POINTER
        if not p.is_file():
            return None
        try:
            with open(p) as f:
                ptr = json.load(f)
            VERSION_RE.match(ptr["version"]).group(0)
            return ptr
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InputError(f"registry pointer {p} is damaged (edited by hand?): fix it or "
                             f"remove it and promote a version again") from None

    def production(self) -> Optional[str]:
        """The production version id, or None before the first promotion."""
        ptr = self._pointer()
        return ptr["version"] if ptr else None

    def production_model(self) -> Optional[ModelVersion]:
        v = self.production()
        return self.get(v) if v else None

    def history(self) -> list[dict]:
        """Every promote/rollback, oldest first (from ``promotions.jsonl``)."""
        p = self.root / AUDIT
        if not p.is_file():
            return []
        out = []
        with open(p) as f:
            for line in f:
                line = line.strip()
                if line:
                    with contextlib.suppress(ValueError):  # a torn last line from a crash
                        out.append(json.loads(line))
        return out

    def _set_pointer(self, version: str, stack: list[str], action: str, reason: str,
                     previous: Optional[str]) -> None:
        at = _now()
        ptr = {"version": version, "previous": previous, "action": action, "reason": reason,
               "at": at, "stack": stack}
        _write_durable(self.root / POINTER, json.dumps(ptr, indent=2) + "\n")
        entry = {"at": at, "action": action, "version": version, "previous": previous,
                 "reason": reason, "pid": os.getpid(), "host": socket.gethostname()}
        with open(self.root / AUDIT, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def promote(self, version: str, reason: str) -> Optional[str]:
        """Make ``version`` production (atomic pointer swap, logged); returns the previous one."""
        if not isinstance(reason, str) or not reason.strip():
            raise InputError("registry: promote needs a reason (it goes to the audit log)")
        with self.lock():
            self.get(version)  # InputError when unknown
            ptr = self._pointer()
            previous = ptr["version"] if ptr else None
            stack = list(ptr["stack"]) if ptr else []
            if previous != version:
                stack.append(version)
            self._set_pointer(version, stack, "promote", reason, previous)
            return previous

    def rollback(self, reason: str = "rollback") -> str:
        """Return production to the version before the current one; returns the new production.

        InputError when there is no earlier production version.
        """
        with self.lock():
            ptr = self._pointer()
            if not ptr or len(ptr["stack"]) < 2:
                raise InputError(f"registry {self.root}: no earlier production version to roll back to")
            stack = list(ptr["stack"])
            current = stack.pop()
            target = stack[-1]
            self.get(target)
            self._set_pointer(target, stack, "rollback", reason, current)
            return target


# ---------------------------------------------------------------------- gate
def _macro_f1(metrics: dict, which: str) -> float:
    try:
        v = metrics["macro"]["f1"]
    except (KeyError, TypeError):
        raise InputError(f"gate: {which} metrics have no macro.f1") from None
    if v is None or not isinstance(v, (int, float)) or math.isnan(v):
        raise InputError(f"gate: {which} macro.f1 is {v!r}, not a number")
    return float(v)


def _class_entries(metrics: dict, which: str) -> list[dict]:
    # metrics.json keeps its per-class list under "per_class" ("classes" accepted too)
    classes = None
    if isinstance(metrics, dict):
        classes = metrics.get("per_class", metrics.get("classes"))
    if not isinstance(classes, list):
        raise InputError(f"gate: {which} metrics have no per-class list 'per_class'")
    return classes


def _recalls(metrics: dict, which: str) -> dict[str, float]:
    """label (as str) -> recall, leaving out classes whose recall is null/NaN/missing."""
    out = {}
    for c in _class_entries(metrics, which):
        r = c.get("recall")
        if isinstance(r, (int, float)) and not isinstance(r, bool) and not math.isnan(r):
            out[str(c.get("label"))] = float(r)
    return out


def minority_classes_from(metrics: dict) -> list:
    """The smallest classes whose total support is at most half the rows (CRL's rule, as in
    ``distribution.json``), from a metrics dict's per-class supports."""
    entries = [c for c in _class_entries(metrics, "candidate") if (c.get("support") or 0) > 0]
    total = sum(c["support"] for c in entries)
    out, acc = [], 0
    for c in sorted(entries, key=lambda c: (c["support"], str(c["label"]))):
        if acc + c["support"] > total / 2:
            break
        acc += c["support"]
        out.append(c["label"])
    return out


def gate(candidate_metrics: dict, production_metrics: Optional[dict], tolerance: float,
         minority_recall_tolerance: float, minority_classes: Optional[Sequence] = None
         ) -> tuple[bool, list[str]]:
    """Decide whether a candidate may replace production; returns ``(passed, reasons)``.

    Passes when (1) ``macro.f1(candidate) >= macro.f1(production) - tolerance`` and (2) the mean
    recall over the minority classes is ``>= production's mean - minority_recall_tolerance``.
    The mean is taken over the minority classes that have a non-null recall in *both* metrics
    (a class absent from one test split has a null recall and is left out of both means, so
    the two means compare the same classes); when none is left, check (2) is skipped and says
    so. ``minority_classes=None`` derives them from the candidate's supports. With no
    production model the candidate passes. ``reasons`` explains each check with its numbers.
    """
    for name, tol in (("tolerance", tolerance), ("minority_recall_tolerance", minority_recall_tolerance)):
        if not isinstance(tol, (int, float)) or isinstance(tol, bool) or math.isnan(tol) or tol < 0:
            raise InputError(f"gate: {name} must be a number >= 0, got {tol!r}")
    if not isinstance(candidate_metrics, dict):
        raise InputError("gate: candidate metrics must be a dict (metrics.json)")
    cand_f1 = _macro_f1(candidate_metrics, "candidate")
    if production_metrics is None:
        return True, [f"no production model: the first model passes (candidate macro-F1 {cand_f1:.4f})"]
    prod_f1 = _macro_f1(production_metrics, "production")

    eps = 1e-12
    passed = True
    reasons = []
    floor = prod_f1 - tolerance
    if cand_f1 + eps >= floor:
        reasons.append(f"macro-F1 ok: candidate {cand_f1:.4f} >= production {prod_f1:.4f} - {tolerance:g}")
    else:
        passed = False
        reasons.append(f"macro-F1 worse: candidate {cand_f1:.4f} < production {prod_f1:.4f} - {tolerance:g}")

    if minority_classes is None:
        minority_classes = minority_classes_from(candidate_metrics)
    wanted = [str(c) for c in minority_classes]
    cand_r, prod_r = _recalls(candidate_metrics, "candidate"), _recalls(production_metrics, "production")
    both = [c for c in wanted if c in cand_r and c in prod_r]
    left_out = [c for c in wanted if c not in both]
    if not both:
        reasons.append("minority recall check skipped: no minority class has a recall in both "
                       "candidate and production metrics" if wanted else
                       "minority recall check skipped: no minority classes")
        return passed, reasons
    cm = sum(cand_r[c] for c in both) / len(both)
    pm = sum(prod_r[c] for c in both) / len(both)
    note = f" over {len(both)} minority classes"
    if left_out:
        note += f" ({len(left_out)} without a recall left out: {', '.join(left_out[:10])})"
    if cm + eps >= pm - minority_recall_tolerance:
        reasons.append(f"minority recall ok: candidate mean {cm:.4f} >= production {pm:.4f} - "
                       f"{minority_recall_tolerance:g}{note}")
    else:
        passed = False
        reasons.append(f"minority recall worse: candidate mean {cm:.4f} < production {pm:.4f} - "
                       f"{minority_recall_tolerance:g}{note}")
    return passed, reasons


# ---------------------------------------------------------------- operator CLI
def main(argv: Optional[Iterable[str]] = None) -> int:
    """``python -m pipeline.flows.registry ROOT list|show V|production|promote V --reason R|rollback``."""
    p = argparse.ArgumentParser(prog="python -m pipeline.flows.registry",
                                description="Inspect the file-based model registry; promote or roll back by hand.")
    p.add_argument("root", help="registry directory (registry.root)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="versions with macro-F1, parent and the production marker")
    s = sub.add_parser("show", help="print a version's version.json")
    s.add_argument("version")
    sub.add_parser("production", help="print the production version (empty when none)")
    sub.add_parser("history", help="print the promotion audit log")
    s = sub.add_parser("promote", help="make a version production")
    s.add_argument("version")
    s.add_argument("--reason", required=True)
    s = sub.add_parser("rollback", help="return production to the previous version")
    s.add_argument("--reason", default="manual rollback")
    a = p.parse_args(list(argv) if argv is not None else None)
    reg = ModelRegistry(a.root)
    try:
        if a.cmd == "list":
            prod = reg.production()
            for v in reg.list_versions():
                info = reg.get(v).info
                f1 = (info.get("metrics") or {}).get("macro", {}).get("f1")
                f1s = f"{f1:.4f}" if isinstance(f1, (int, float)) else "-"
                print(f"{'*' if v == prod else ' '} {v}  {info['created_at']}  macro_f1={f1s}  "
                      f"parent={info.get('parent') or '-'}")
        elif a.cmd == "show":
            print(json.dumps(reg.get(a.version).info, indent=2))
        elif a.cmd == "production":
            print(reg.production() or "")
        elif a.cmd == "history":
            for e in reg.history():
                print(json.dumps(e))
        elif a.cmd == "promote":
            reg.promote(a.version, a.reason)
            print(a.version)
        elif a.cmd == "rollback":
            print(reg.rollback(a.reason))
    except (InputError, RegistryLockTimeout) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
