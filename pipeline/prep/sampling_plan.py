"""How many rows each class gets: the pure plan of the sampler (no Spark, no I/O).

:func:`plan_counts` is a pure function of the class counts. It reproduces the target counts of
imbalanced-learn's ``RandomUnderSampler`` / ``RandomOverSampler`` for every ``sampling_strategy``
form (``auto``, ``majority``, ``minority``, ``not minority``, ``not majority``, ``all``, a float for
binary data, a dict label -> count) and adds the survey's ``threshold`` (cap every class at N rows,
the pre-training set of Lee et al.'s two-phase learning), ``floor`` (raise every class to at least
M rows by ROS) and ``hybrid`` (both). :func:`check_request` checks the parts of a request that do
not depend on the data, once, and returns them as a :class:`SamplingRequest`.

References:

* H. Lee, M. Park, J. Kim, "Plankton classification on imbalanced large scale database via
  convolutional neural networks with transfer learning", ICIP 2016,
  https://doi.org/10.1109/ICIP.2016.7533053
* J. M. Johnson, T. M. Khoshgoftaar, "Survey on deep learning with class imbalance", Journal of Big
  Data 6, 27 (2019), https://doi.org/10.1186/s40537-019-0192-5
"""
from __future__ import annotations

import numbers
import typing
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from pipeline.config import SamplingMethod
from pipeline.errors import InputError

STRATEGIES = typing.get_args(SamplingMethod)
TARGET_KINDS = ("auto", "majority", "minority", "not minority", "not majority", "all")


@dataclass(frozen=True)
class SamplingRequest:
    """A checked, normalised request: the strategy (lower case) and the ``cap`` / ``floor`` it uses
    (None for the strategies that do not)."""

    strategy: str
    cap: Optional[int] = None
    floor: Optional[int] = None


def _ordered(class_counts: Mapping) -> list:
    """Labels in imbalanced-learn's order (np.unique: sorted), so ties resolve as it does."""
    try:
        return sorted(class_counts)
    except TypeError:  # mixed types: keep a stable order
        return sorted(class_counts, key=lambda x: (type(x).__name__, str(x)))


def _resolve_label(key: Any, class_counts: Mapping) -> Any:
    """Map a dict-target key (maybe a JSON string) onto a label of the data."""
    if key in class_counts:
        return key
    by_str = {str(lab): lab for lab in class_counts}
    if str(key) in by_str:
        return by_str[str(key)]
    if isinstance(key, str):
        try:
            k = int(key)
        except ValueError:
            k = None
        if k is not None and k in class_counts:
            return k
    raise InputError(f"sampling target names class {key!r}, which is not in the data "
                     f"(classes: {_short(list(class_counts))})")


def _short(items: list, n: int = 8) -> str:
    s = ", ".join(str(x) for x in items[:n])
    return s + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _as_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != int(value):
        raise InputError(f"{name} must be a whole number of rows, got {value!r}")
    return int(value)


def _keyword_plan(kind: str, counts: dict, labels: list, over: bool) -> dict:
    """imbalanced-learn's string targets → {label: target count} for the targeted classes."""
    n_max, n_min = max(counts.values()), min(counts.values())
    c_max = max(labels, key=counts.get)   # first label with the largest count (as imblearn)
    c_min = min(labels, key=counts.get)
    if kind == "auto":
        kind = "not majority" if over else "not minority"
    if kind == "majority":
        if over:
            raise InputError("target 'majority' cannot be used with ros: over-sampling the "
                             "majority class is a no-op (use 'not majority' or 'auto')")
        targeted = [c_max]
    elif kind == "minority":
        if not over:
            raise InputError("target 'minority' cannot be used with rus: under-sampling the "
                             "minority class is a no-op (use 'not minority' or 'auto')")
        targeted = [c_min]
    elif kind == "not minority":
        targeted = [c for c in labels if c != c_min]
    elif kind == "not majority":
        targeted = [c for c in labels if c != c_max]
    elif kind == "all":
        targeted = list(labels)
    else:  # pragma: no cover - guarded by the caller
        raise InputError(f"unknown target {kind!r}")
    goal = n_max if over else n_min
    return {c: goal for c in targeted}


def _float_plan(ratio: float, counts: dict, labels: list, over: bool) -> dict:
    """Binary float target: the minority/majority ratio after resampling (imbalanced-learn)."""
    if len(labels) != 2:
        raise InputError(f"a float target ({ratio}) needs binary data, but there are "
                         f"{len(labels)} classes: use a JSON dict label -> count")
    if not (0 < ratio <= 1):
        raise InputError(f"a float target must be in (0, 1], got {ratio}")
    if over:
        c_max = max(labels, key=counts.get)
        n_max = counts[c_max]
        add = {c: int(n_max * ratio - counts[c]) for c in labels if c != c_max}
        if any(a <= 0 for a in add.values()):
            raise InputError(f"target {ratio} would make ros remove minority rows "
                             f"(class sizes {_counts_text(counts)}): increase the ratio")
        return {c: counts[c] + a for c, a in add.items()}
    c_min = min(labels, key=counts.get)
    n_min = counts[c_min]
    plan = {c: int(n_min / ratio) for c in labels if c != c_min}
    if any(plan[c] > counts[c] for c in plan):
        raise InputError(f"target {ratio} would make rus grow the majority class "
                         f"(class sizes {_counts_text(counts)}): increase the ratio")
    return plan


def _counts_text(counts: Mapping) -> str:
    return ", ".join(f"{k}: {v}" for k, v in list(counts.items())[:8])


def check_request(strategy: Any, cap: Any = None, floor: Any = None) -> SamplingRequest:
    """Check the parts of a request that do not depend on the data; return them normalised.

    ``cap`` / ``floor`` are checked (and kept) only for the strategies that use them."""
    if not isinstance(strategy, str) or strategy.strip().lower() not in STRATEGIES:
        raise InputError(f"unknown sampling strategy {strategy!r}: expected one of "
                         f"{', '.join(STRATEGIES)}")
    strategy = strategy.strip().lower()
    if strategy in ("threshold", "hybrid"):
        if cap is None:
            raise InputError(f"strategy {strategy} needs --cap N (the largest class size)")
        cap = _as_count("--cap", cap)
        if cap < 1:
            raise InputError(f"--cap must be at least 1, got {cap}")
    if strategy in ("floor", "hybrid"):
        if floor is None:
            raise InputError(f"strategy {strategy} needs --floor M (the smallest class size)")
        floor = _as_count("--floor", floor)
        if floor < 1:
            raise InputError(f"--floor must be at least 1, got {floor}")
    if strategy == "hybrid" and floor > cap:
        raise InputError(f"hybrid needs --floor <= --cap, got floor {floor} > cap {cap}")
    return SamplingRequest(strategy, cap if strategy in ("threshold", "hybrid") else None,
                           floor if strategy in ("floor", "hybrid") else None)


def check_target(strategy: str, sampling_strategy: Any) -> None:
    """Check a rus/ros ``sampling_strategy`` before any data exists (its form; the counts it names
    are checked against the data by :func:`plan_counts`). Other strategies ignore it."""
    target = sampling_strategy
    if str(strategy).strip().lower() not in ("rus", "ros"):
        return
    if isinstance(target, str):
        kind = " ".join(target.strip().lower().replace("_", " ").split())
        if kind in TARGET_KINDS:
            return
        try:
            target = float(kind)
        except ValueError:
            raise InputError(f"unknown sampling target {target!r}: expected one of "
                             f"{', '.join(TARGET_KINDS)}, a float or a JSON dict") from None
    if isinstance(target, numbers.Real) and not isinstance(target, bool):
        if not 0.0 < float(target) <= 1.0:
            raise InputError(f"a float target must be in (0, 1], got {target}")
        return
    if isinstance(target, Mapping):
        if not target:
            raise InputError("the sampling target dict is empty")
        for key, want in target.items():
            if _as_count(f"target for class {key!r}", want) < 0:
                raise InputError(f"target for class {key!r} is negative ({want})")
        return
    raise InputError(f"bad sampling target {target!r}: expected one of "
                     f"{', '.join(TARGET_KINDS)}, a float or a dict label -> count")


def plan_counts(class_counts: Mapping, strategy: str, sampling_strategy: Any = "auto",
                cap: Optional[int] = None, floor: Optional[int] = None) -> dict:
    """Target row count per class (every class of ``class_counts``) for a sampling request.

    ``strategy``: ``none`` (unchanged), ``rus`` / ``ros`` with ``sampling_strategy`` in
    imbalanced-learn's forms, ``threshold`` (classes above ``cap`` cut to ``cap``), ``floor``
    (classes below ``floor`` raised to ``floor``), ``hybrid`` (both). ``sampling_strategy`` is used by
    rus/ros only, ``cap``/``floor`` only by the strategies that name them. Raises
    :class:`InputError` for a request imbalanced-learn would reject or that makes no sense.
    """
    return planned_counts(class_counts, check_request(strategy, cap, floor), sampling_strategy)


def planned_counts(class_counts: Mapping, request: SamplingRequest, sampling_strategy: Any = "auto") -> dict:
    """:func:`plan_counts` for a request already checked by :func:`check_request` (not checked again)."""
    strategy, cap, floor, target = request.strategy, request.cap, request.floor, sampling_strategy
    counts = {}
    for lab, n in class_counts.items():
        n = _as_count(f"count of class {lab!r}", n)
        if n < 0:
            raise InputError(f"class {lab!r} has a negative count {n}")
        if n > 0:
            counts[lab] = n
    if not counts:
        raise InputError("no rows to sample: every class is empty")
    if len(counts) < 2:
        raise InputError(f"sampling needs at least 2 classes, the data has only class "
                         f"{next(iter(counts))!r} ({next(iter(counts.values()))} rows)")
    labels = _ordered(counts)
    plan = {c: counts[c] for c in labels}

    if strategy == "none":
        return plan
    if strategy == "threshold":
        return {c: min(n, cap) for c, n in plan.items()}
    if strategy == "floor":
        return {c: max(n, floor) for c, n in plan.items()}
    if strategy == "hybrid":
        return {c: min(max(n, floor), cap) for c, n in plan.items()}

    over = strategy == "ros"
    name = "ros" if over else "rus"
    if isinstance(target, str):
        kind = " ".join(target.strip().lower().replace("_", " ").split())
        if kind not in TARGET_KINDS:
            try:
                target = float(kind)
            except ValueError:
                raise InputError(f"unknown sampling target {target!r}: expected one of "
                                 f"{', '.join(TARGET_KINDS)}, a float or a JSON dict") from None
        else:
            plan.update(_keyword_plan(kind, counts, labels, over))
            return plan
    if isinstance(target, numbers.Real) and not isinstance(target, bool):
        plan.update(_float_plan(float(target), counts, labels, over))
        return plan
    if isinstance(target, Mapping):
        if not target:
            raise InputError("the sampling target dict is empty")
        for key, want in target.items():
            lab = _resolve_label(key, counts)
            want = _as_count(f"target for class {key!r}", want)
            if want < 0:
                raise InputError(f"target for class {key!r} is negative ({want})")
            if over and want < counts[lab]:
                raise InputError(f"ros cannot shrink class {lab}: it has {counts[lab]} rows "
                                 f"and the target asks for {want}")
            if not over and want > counts[lab]:
                raise InputError(f"rus cannot grow class {lab}: it has {counts[lab]} rows "
                                 f"and the target asks for {want}")
            plan[lab] = want
        return plan
    raise InputError(f"bad sampling target {target!r} for {name}: expected one of "
                     f"{', '.join(TARGET_KINDS)}, a float or a dict label -> count")
