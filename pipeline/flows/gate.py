"""The promotion gate: may a retrained candidate replace the production model?

Pure functions over two ``metrics.json`` dicts (the candidate's and production's, both scored on
the same fresh test split); :mod:`pipeline.flows.retrain` calls :func:`gate` and records its
verdict on the candidate's model version.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from pipeline.errors import InputError


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


