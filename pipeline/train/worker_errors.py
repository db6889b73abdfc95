"""How errors raised on Ray Train workers reach the user.

Ray Train retries every worker-group failure (``FailureConfig.max_failures``) and then raises a
``TrainingFailedError`` whose text is hundreds of lines of nested tracebacks. Two kinds of errors
need better:

* **Bad input** (:class:`~pipeline.errors.InputError` / ``ConfigError`` raised in a worker, e.g. a
  per-class loss weight of the wrong length): the worker writes the message to
  ``<out>/worker_errors/input_error-<rank>.txt`` and returns normally, so Ray does not retry; the
  driver then raises the same ``InputError`` — one line, exit status 2.
* **Anything else**: the driver writes the full worker traceback to ``<out>/train_error.log`` and
  raises a ``RuntimeError`` whose message is the worker's own last traceback line (the exception
  and its message) and the log's path — the last line the user sees on stderr.
"""
from __future__ import annotations

import shutil
import traceback
from pathlib import Path

from pipeline.errors import InputError

ERRORS_DIR = "worker_errors"
TRACE_FILE = "train_error.log"


def write_worker_input_error(out_dir: str | Path, rank: int, error: InputError) -> None:
    d = Path(out_dir) / ERRORS_DIR
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".input_error-{rank}.txt.tmp"
    tmp.write_text(str(error).splitlines()[0] if str(error) else type(error).__name__)
    tmp.replace(d / f"input_error-{rank}.txt")


def clear_worker_errors(out_dir: str | Path) -> None:
    shutil.rmtree(Path(out_dir) / ERRORS_DIR, ignore_errors=True)


def raise_worker_input_error(out_dir: str | Path) -> None:
    """Raise the InputError a worker reported (the lowest rank's), if any."""
    d = Path(out_dir) / ERRORS_DIR
    files = sorted(d.glob("input_error-*.txt"), key=lambda p: int(p.stem.split("-")[-1])) if d.is_dir() else []
    if files:
        raise InputError(files[0].read_text().strip())


def _worker_exceptions(error: BaseException) -> list[BaseException]:
    """The exceptions inside a Ray Train failure (rank order), else the error itself."""
    failures = getattr(error, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        return [failures[k] for k in sorted(failures)]
    inner = getattr(error, "controller_failure", None)
    return [inner] if isinstance(inner, BaseException) else [error]


def _base(exc: BaseException) -> tuple[BaseException, str]:
    """(the user's exception, its traceback text) — Ray wraps worker exceptions with their trace."""
    base = getattr(exc, "_base_exc", None)
    text = getattr(exc, "_traceback_str", None)
    if base is None:
        base = exc
    if not text:
        text = "".join(traceback.format_exception(type(base), base, base.__traceback__))
    return base, text


def first_useful_line(trace: str) -> str:
    """The last ``Type: message`` line of a traceback (where the error was raised), or its last line."""
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if not ln.startswith(("File ", "^", "~", "During handling", "The above exception", "Traceback")) \
                and ":" in ln.split(" ")[0]:
            return ln
    return lines[-1] if lines else "unknown error"


def raise_worker_failure(out_dir: str | Path, error: BaseException) -> None:
    """After ``trainer.fit()`` raised: a worker's InputError as itself, anything else as a
    RuntimeError with one useful line (the full trace in ``<out>/train_error.log``)."""
    raise_worker_input_error(out_dir)
    excs = [_base(e) for e in _worker_exceptions(error)]
    for base, _ in excs:
        if isinstance(base, InputError):
            raise InputError(str(base).splitlines()[0]) from None
    log = Path(out_dir) / TRACE_FILE
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("\n\n".join(text for _, text in excs) + "\n\n" + "".join(
        traceback.format_exception(type(error), error, error.__traceback__)))
    line = first_useful_line(excs[0][1])
    raise RuntimeError(f"training failed on a Ray worker: {line} (full trace: {log})") from None
