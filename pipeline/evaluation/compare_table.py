"""Method against reference, per class: the pure table behind the report's comparison section.

Inputs are two ``metrics.json`` dicts of the same test rows and the paired-bootstrap intervals of
:func:`pipeline.evaluation.intervals.paired_deltas`. A class *gained* when the 95% interval of its
F1 delta lies above 0, *lost* when it lies below 0; otherwise the data cannot tell the two models
apart on that class (with 30 test rows a class's F1 interval is typically ±0.15 wide).
"""
from __future__ import annotations

from typing import Optional

from pipeline.evaluation.metric_math import GROUP_BASIS_TEXT, size_groups


def _sub(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a - b


def compare_metrics(method: dict, reference: dict, deltas: dict, sizes: Optional[dict] = None) -> dict:
    """Per-class rows (F1, recall of both, deltas with intervals), gained/lost classes, macro and
    L5/Rest summaries of both models (L5 by ``sizes``, the training rows per class, when given)."""
    ref_by = {r["label"]: r for r in reference["per_class"]}
    pc = deltas["per_class"]
    rows, gained, lost = [], [], []
    for r in method["per_class"]:
        c = r["label"]
        if r["support"] == 0:
            continue
        q = ref_by[c]
        f1_ci, rec_ci = pc["f1_delta_ci"][c], pc["recall_delta_ci"][c]
        row = {"label": c, "name": r.get("name"), "train_rows": (sizes or {}).get(c), "support": r["support"],
               "f1": r["f1"], "f1_ref": q["f1"], "f1_delta": _sub(r["f1"], q["f1"]), "f1_delta_ci": f1_ci,
               "f1_ci": pc["f1_method_ci"][c], "f1_ref_ci": pc["f1_reference_ci"][c],
               "recall": r["recall"], "recall_ref": q["recall"], "recall_delta": _sub(r["recall"], q["recall"]),
               "recall_delta_ci": rec_ci}
        if f1_ci[0] is not None and f1_ci[0] > 0:
            row["verdict"] = "gained"
            gained.append(c)
        elif f1_ci[1] is not None and f1_ci[1] < 0:
            row["verdict"] = "lost"
            lost.append(c)
        else:
            row["verdict"] = "no clear change"
        rows.append(row)

    def summary(m: dict) -> dict:
        g = size_groups(m["per_class"], sizes)
        return {"macro_f1": m["macro"]["f1"], "balanced_accuracy": m["balanced_accuracy"],
                "accuracy": m["accuracy"], "l5_f1": g["L5"]["f1"], "rest_f1": g["rest"]["f1"],
                "l5_classes": g["L5"]["classes"], "groups_by": GROUP_BASIS_TEXT[g["basis"]],
                "f1_zero_classes": sum(1 for r in m["per_class"] if r["support"] > 0 and r["f1"] == 0)}

    s_m, s_r = summary(method), summary(reference)
    return {"per_class": rows, "gained": gained, "lost": lost,
            "method": s_m | {"macro_f1_ci": deltas["macro_f1_method_ci"],
                             "balanced_accuracy_ci": deltas["balanced_accuracy_method_ci"]},
            "reference": s_r | {"macro_f1_ci": deltas["macro_f1_reference_ci"],
                                "balanced_accuracy_ci": deltas["balanced_accuracy_reference_ci"]},
            "delta": {"macro_f1": _sub(s_m["macro_f1"], s_r["macro_f1"]), "macro_f1_ci": deltas["macro_f1_delta_ci"],
                      "balanced_accuracy": _sub(s_m["balanced_accuracy"], s_r["balanced_accuracy"]),
                      "balanced_accuracy_ci": deltas["balanced_accuracy_delta_ci"],
                      "l5_f1": _sub(s_m["l5_f1"], s_r["l5_f1"]), "rest_f1": _sub(s_m["rest_f1"], s_r["rest_f1"])},
            "replicates": deltas["replicates"], "seed": deltas["seed"], "n_rows": deltas["n_rows"],
            "seeds": deltas.get("seeds", {"method": 1, "reference": 1}), "covers": deltas.get("covers", "test rows")}
