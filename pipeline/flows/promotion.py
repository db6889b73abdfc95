"""Model versions and promotion in the MLflow Model Registry (the edges retrain and ``imbalance registry`` call).

The registry is MLflow's, on the tracking store (``tracking.uri``; by default the SQLite file
``<run.root>/mlflow.db``, so no server is needed). One registered model, ``registry.model_name``,
holds a version per retrain candidate; its source is the model the candidate's MLflow run logged
(``mlflow.pytorch``), so ``mlflow.pytorch.load_model("models:/<name>@production")`` serves it.
Two aliases mark the state:

``production``
    the served version (moved by a promotion or a rollback, never by registering);
``previous``
    the version production replaced (``models:/<name>@previous``), for a quick look or a rollback.

Each promoted version carries the tag ``replaced`` (the version it replaced), so :func:`rollback`
walks back one promotion at a time, as far as the first model.

Why two retrains racing never both promote: MLflow has no compare-and-set on aliases, so
:func:`promote` takes an exclusive lock, checks that ``production`` still points at the version the
gate compared against (``expected``) and only then moves the aliases; a retrain that lost the race
raises :class:`ProductionMoved` and moves nothing. The lock is ``fcntl.flock`` on a file beside the
SQLite store (``<store>.registry.lock``; for a server URI ``<run.root>/registry.lock``): the kernel
releases it when the holder dies, so a killed retrain never leaves the registry locked. With a
server URI the guarantee covers the retrains that share that ``run.root`` directory (one machine,
or a shared volume with working locks such as NFSv4); retrains on machines that share only the
server are not serialised against each other.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from pipeline.config import Config
from pipeline.errors import InputError
from pipeline.flows import tracking
from pipeline.io import local_path

PRODUCTION, PREVIOUS = "production", "previous"
ANY = object()  # promote(expected=ANY): an operator's promotion, whatever production is now


class RegistryLockTimeout(TimeoutError):
    """Another process held the registry lock for longer than ``registry.lock_timeout``."""


class ProductionMoved(RuntimeError):
    """``production`` no longer points at the version the gate compared against."""


@dataclasses.dataclass
class Registry:
    """Where the registered model lives: an ``MlflowClient``, the model's name, the lock file."""

    client: Any
    name: str
    lock_path: Path
    lock_timeout: float = 600.0
    uri: str = ""


def open_registry(cfg: Config, must_exist: bool = False) -> Registry:
    """The registry of ``cfg``: the tracking store's model ``registry.model_name``.

    ``must_exist``: an InputError, rather than a new empty store, when the SQLite file is missing
    (an operator's command pointed at the wrong ``run.root``)."""
    uri = tracking.tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if must_exist and not db.is_file():
            raise InputError(f"no MLflow store at {uri} (check --config / run.root / tracking.uri)")
        lock = Path(str(db) + ".registry.lock")
    else:
        lock = local_path(cfg.run.root).resolve() / "registry.lock"
    client = tracking.connect(cfg)
    return Registry(client, cfg.registry.model_name, lock, float(cfg.registry.lock_timeout), uri)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _not_found(e: Exception) -> bool:
    return getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


# ------------------------------------------------------------------------- lock
@contextlib.contextmanager
def lock(reg: Registry) -> Iterator[None]:
    """Hold the registry's exclusive lock (``fcntl.flock``; released by the kernel if we die)."""
    reg.lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(reg.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline, wait = time.monotonic() + reg.lock_timeout, 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
            if time.monotonic() >= deadline:
                raise RegistryLockTimeout(
                    f"registry {reg.name} is locked by another process ({_holder(reg.lock_path)}); "
                    f"gave up after {reg.lock_timeout:g} s (registry.lock_timeout)")
            time.sleep(wait)
            wait = min(wait * 2, 0.5)
        with contextlib.suppress(OSError):  # who holds it, for the timeout message of the others
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                      "since": _now()}).encode() + b"\n", 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text() or "{}")
        return f"pid {h['pid']} on {h['host']} since {h['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


# ------------------------------------------------------------------------ reads
def aliases(reg: Registry) -> dict[str, str]:
    """``{alias: version}`` of the registered model; empty when it is not registered yet."""
    try:
        return {a: str(v) for a, v in reg.client.get_registered_model(reg.name).aliases.items()}
    except Exception as e:  # noqa: BLE001 - MlflowException, imported lazily with mlflow
        if _not_found(e):
            return {}
        raise


def production(reg: Registry):
    """The production ``ModelVersion``, or None before the first promotion."""
    v = aliases(reg).get(PRODUCTION)
    return get_version(reg, v) if v else None


def get_version(reg: Registry, version: str):
    """A ``ModelVersion``; InputError naming the model and version when there is none."""
    try:
        return reg.client.get_model_version(reg.name, str(version))
    except Exception as e:  # noqa: BLE001
        if _not_found(e) or getattr(e, "error_code", "") == "INVALID_PARAMETER_VALUE":
            raise InputError(f"registry {reg.uri}: model {reg.name} has no version {version}") from None
        raise


def versions(reg: Registry) -> list:
    """Every version of the model, oldest first; InputError when the model is not registered."""
    if not aliases(reg) and not _exists(reg):
        raise InputError(f"registry {reg.uri}: no registered model named {reg.name}")
    found = reg.client.search_model_versions(f"name = '{reg.name}'")
    return sorted(found, key=lambda mv: int(mv.version))


def _exists(reg: Registry) -> bool:
    try:
        reg.client.get_registered_model(reg.name)
        return True
    except Exception as e:  # noqa: BLE001
        if _not_found(e):
            return False
        raise


def registered_model_dir(cfg: Config, uri: str, dest: Path) -> Path:
    """A registry model URI (``models:/<name>@<alias>`` or ``models:/<name>/<version>``) → the
    version's model directory (``model.pt``, ``model.json`` with its calibration), downloaded
    into ``dest`` by :func:`download_model_dir`."""
    body = uri[len("models:/"):] if uri.startswith("models:/") else ""
    name, sep, ref = body.partition("@") if "@" in body else body.partition("/")
    if not name or not sep or not ref:
        raise InputError(f"{uri} is not a registry model URI (models:/<name>@<alias> or models:/<name>/<version>)")
    reg = open_registry(dataclasses.replace(cfg, registry=dataclasses.replace(cfg.registry, model_name=name)),
                        must_exist=True)
    if sep == "@":
        version = aliases(reg).get(ref)
        if version is None:
            raise InputError(f"registry {reg.uri}: model {name} has no alias {ref!r}")
    else:
        version = ref
    return download_model_dir(reg, get_version(reg, version), dest)


def download_model_dir(reg: Registry, mv, dest: Path) -> Path:
    """A version's model directory, downloaded from its run's ``model_files`` artifacts into
    ``dest`` (reused when already there): what warm start and prediction read."""
    if not (dest / "model_files" / "model.pt").is_file():
        dest.mkdir(parents=True, exist_ok=True)
        reg.client.download_artifacts(mv.run_id, "model_files", str(dest))
    return dest / "model_files"


# ----------------------------------------------------------------------- writes
def logged_model_id(reg: Registry, run_id: str, name: str = "model") -> str:
    """The id of the model ``name`` that run ``run_id`` logged (``tracking.log_model``)."""
    run = reg.client.get_run(run_id)
    found = reg.client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                            filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
                                            order_by=[{"field_name": "creation_timestamp", "ascending": False}])
    if not found:
        raise RuntimeError(f"MLflow run {run_id} has no logged model {name!r}: nothing to register")
    return found[0].model_id


def register(reg: Registry, run_id: str, tags: dict, source: Optional[str] = None):
    """A new version of the model from run ``run_id`` (created on first use), with ``tags``.

    ``source`` defaults to the model the run logged (``models:/<model id>``). Versions are created
    under the lock, so concurrent retrains on one SQLite store never contend for the next number.
    """
    model_id = None
    if source is None:
        model_id = logged_model_id(reg, run_id)
        source = f"models:/{model_id}"
    with lock(reg):
        if not _exists(reg):
            reg.client.create_registered_model(reg.name, description="imbalance-pipeline retrain candidates; "
                                               "alias 'production' is the served version")
        return reg.client.create_model_version(reg.name, source, run_id=run_id,
                                               tags={k: str(v) for k, v in tags.items()}, model_id=model_id)


def _point(reg: Registry, alias: str, version: Optional[str]) -> None:
    if version:
        reg.client.set_registered_model_alias(reg.name, alias, str(version))
    else:
        with contextlib.suppress(Exception):  # no such alias: nothing to delete
            reg.client.delete_registered_model_alias(reg.name, alias)


def promote(reg: Registry, version: str, reason: str, expected: Any = ANY) -> Optional[str]:
    """Make ``version`` production; returns the version it replaced (None for the first).

    ``expected``: the production version (or None) the caller judged against; when production has
    moved since, :class:`ProductionMoved` is raised and nothing changes (compare-and-set under the
    lock). The replaced version becomes ``previous`` and is recorded on ``version`` as ``replaced``.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise InputError("registry: promote needs a reason (it is kept on the version)")
    with lock(reg):
        get_version(reg, version)  # InputError when unknown
        current = aliases(reg).get(PRODUCTION)
        if expected is not ANY and current != (str(expected) if expected is not None else None):
            raise ProductionMoved(f"production moved from {expected or 'none'} to {current or 'none'} "
                                  f"while version {version} was judged")
        if current == str(version):
            return current
        c = reg.client
        c.set_model_version_tag(reg.name, str(version), "replaced", current or "")
        c.set_model_version_tag(reg.name, str(version), "promoted_at", _now())
        c.set_model_version_tag(reg.name, str(version), "promote_reason", reason[:5000])
        _point(reg, PRODUCTION, version)  # the one write that changes what is served
        _point(reg, PREVIOUS, current)
        return current


def rollback(reg: Registry, reason: str = "rollback") -> str:
    """Return production to the version the current one replaced; returns the new production.

    ``previous`` moves back too (to what that version replaced). InputError when there is none.
    """
    with lock(reg):
        current = aliases(reg).get(PRODUCTION)
        if not current:
            raise InputError(f"registry {reg.uri}: model {reg.name} has no production version to roll back")
        target = get_version(reg, current).tags.get("replaced")
        if not target:
            raise InputError(f"registry {reg.uri}: no earlier production version to roll back to "
                             f"(version {current} was the first)")
        before = get_version(reg, target).tags.get("replaced")
        c = reg.client
        c.set_model_version_tag(reg.name, current, "rolled_back_at", _now())
        c.set_model_version_tag(reg.name, current, "rollback_reason", reason[:5000])
        _point(reg, PRODUCTION, target)
        _point(reg, PREVIOUS, before)
        return target


# -------------------------------------------------------------------- for people
def describe(reg: Registry, mv) -> dict:
    """A version as a plain dict (``imbalance registry show``): number, source, run, aliases, tags."""
    names = [a for a, v in aliases(reg).items() if v == str(mv.version)]
    return {"name": mv.name, "version": str(mv.version), "source": mv.source, "run_id": mv.run_id,
            "created": _dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, _dt.timezone.utc)
            .isoformat(timespec="seconds"), "aliases": sorted(names), "tags": dict(mv.tags)}


def list_lines(reg: Registry) -> list[str]:
    """One line per version, oldest first: ``*`` marks production; macro-F1, verdict, aliases."""
    lines = []
    for mv in versions(reg):
        d = describe(reg, mv)
        lines.append(f"{'*' if PRODUCTION in d['aliases'] else ' '} {d['version']:>4}  {d['created']}  "
                     f"macro_f1={d['tags'].get('macro_f1', '-')}  verdict={d['tags'].get('verdict', '-')}  "
                     f"replaced={d['tags'].get('replaced') or '-'}  aliases={','.join(d['aliases']) or '-'}")
    return lines
