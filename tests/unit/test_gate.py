"""The promotion gate: hand-computed cases, minority classes from supports, bad input."""
from __future__ import annotations

import pytest

from pipeline.errors import InputError
from pipeline.flows.gate import gate, minority_classes_from


def metrics(f1: float, recalls: dict) -> dict:
    """A metrics.json-shaped dict: macro.f1 and a per-class list with label/support/recall."""
    return {"macro": {"f1": f1},
            "per_class": [{"label": k, "support": s, "recall": r} for k, (s, r) in recalls.items()]}


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
