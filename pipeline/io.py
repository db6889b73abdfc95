"""Small file-system helpers shared by the stages: atomic outputs, JSON, stage markers.

Every stage writes into a temporary sibling of its output and renames it into place only when
complete, so a crash never leaves half-written output where a later stage (or a rerun) would
take it for finished work. Paths without a scheme (or with ``file:``) are local; other schemes
(``s3a://``, ``hdfs://``) are written by Spark directly and are not renamed here.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np

SUCCESS = "_SUCCESS"
#: a training method's JSON-able state beside its model (written by pipeline.train.hook_base, read
#: by the report, which runs without torch)
METHOD_SUMMARY_FILE = "method_state.json"

# A line a Ray worker prints for the user starts with this mark: the driver (engines.get_ray)
# shows such lines on its console without Ray's "(pid=...)" prefix and sends every other worker
# line to the run's worker log instead.
CONSOLE_MARK = "[imbalance] "


def console_line(text: str, in_ray: bool) -> None:
    """Print a line meant for the user's console: marked inside a Ray worker, plain otherwise."""
    print((CONSOLE_MARK + text) if in_ray else text, flush=True)


def is_local(path: str | os.PathLike) -> bool:
    s = str(path)
    return "://" not in s or s.startswith("file://")


def local_path(path: str | os.PathLike) -> Path:
    s = str(path)
    if s.startswith("file://"):
        s = s[len("file://"):]
    return Path(s)


def spark_uri(path: str | os.PathLike) -> str:
    """Absolute URI for Spark readers/writers (local paths become absolute file paths)."""
    s = str(path)
    if is_local(s):
        return str(local_path(s).resolve())
    return s


def file_url(path: str | os.PathLike) -> str:
    """``file://`` URL for readers that need a scheme (Petastorm)."""
    s = str(path)
    if is_local(s):
        return "file://" + str(local_path(s).resolve())
    return s


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; on success replace ``final`` with it.

    On an exception the temporary directory is removed and ``final`` is left as it was.
    """
    final = local_path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = local_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=json_default)
        f.write("\n")
    os.replace(tmp, path)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (temp file + rename): readers see the old file or the new one."""
    path = local_path(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_text(text)
    os.replace(tmp, path)


def log(msg: str) -> None:
    """A progress line for the user, on stderr (stdout carries the command's result)."""
    print(msg, file=sys.stderr, flush=True)


def read_json(path: str | os.PathLike) -> Any:
    with open(local_path(path)) as f:
        return json.load(f)


def json_default(o: Any) -> Any:
    try:
        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.floating):
            return None if np.isnan(o) else float(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def fingerprint(*parts: Any) -> str:
    """Stable SHA-256 of JSON-serialisable parts (config sections, input fingerprints)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=json_default).encode())
        h.update(b"\0")
    return h.hexdigest()


def path_fingerprint(path: str | os.PathLike) -> str:
    """Fingerprint of a local file tree from names, sizes and modification times (cheap)."""
    p = local_path(path)
    if not p.exists():
        return "missing"
    marker = p / SUCCESS
    if marker.is_file() and marker.read_text().strip():  # a stage marker (Spark's own is empty)
        return "success:" + marker.read_text().strip()
    items = []
    for root, dirs, files in os.walk(p):
        dirs.sort()
        for name in sorted(files):
            fp = Path(root) / name
            st = fp.stat()
            items.append((str(fp.relative_to(p)), st.st_size, int(st.st_mtime)))
    if p.is_file():
        st = p.stat()
        items.append((p.name, st.st_size, int(st.st_mtime)))
    return fingerprint(items)


def write_success(directory: str | os.PathLike, fp: str) -> None:
    d = local_path(directory)
    (d / SUCCESS).write_text(fp + "\n")


def read_success(directory: str | os.PathLike) -> str | None:
    m = local_path(directory) / SUCCESS
    return m.read_text().strip() if m.is_file() else None


def label_key(label: Any) -> tuple:
    """Sort key for class labels in tables people read: numbers in numeric order (2 before 10),
    also when they are strings ("2", "10"), and other names after them in text order."""
    text = str(label).strip()
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)
