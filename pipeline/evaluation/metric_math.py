"""The metric formulas of the evaluate stage, in NumPy only (no Spark, no Arrow).

Everything here works on small arrays the Spark passes aggregate (:mod:`pipeline.evaluation.scan`,
:mod:`pipeline.evaluation.ranking`): a K×K confusion matrix, per-class score histograms, or one group
of distinct scores with their positive / negative counts. With K classes, rows of the confusion
matrix true classes and columns predicted ones, ``tp_c = cm[c, c]``, ``support_c = Σ_j cm[c, j]``:

* precision_c = tp/(tp+fp), recall_c = tp/support_c, specificity_c = tn/(tn+fp),
  F1_c = 2tp/(2tp+fp+fn) (scikit-learn's ``precision_recall_fscore_support``);
* one-vs-rest G-mean_c = √(recall_c·specificity_c) and balanced accuracy_c = (recall_c+specificity_c)/2
  (imbalanced-learn's ``sensitivity_specificity_support``);
* multiclass balanced accuracy = (1/K') Σ_c recall_c and G-mean = (Π_c recall_c)^(1/K') over the K'
  classes with support > 0 (scikit-learn's ``balanced_accuracy_score``, imbalanced-learn's
  ``geometric_mean_score``);
* ROC AUC (Mann–Whitney with mid-ranks) ``AUC = Σ_k neg_k·(TP_{<k} + pos_k/2) / (P·N)`` over distinct
  thresholds k in descending order, equal to scikit-learn's ``roc_auc_score``, ties included;
* average precision ``AP = Σ_k (R_k − R_{k−1})·P_k = Σ_k pos_k/P · TP_k/(TP_k + FP_k)``, scikit-learn's
  ``average_precision_score`` (step-wise, not trapezoidal).

References:

* J. A. Hanley, B. J. McNeil, "The meaning and use of the area under a receiver operating characteristic
  (ROC) curve", Radiology 143(1), 1982, https://doi.org/10.1148/radiology.143.1.7063747
* M. Kubat, S. Matwin, "Addressing the curse of imbalanced training sets: one-sided selection", ICML 1997
  pp. 179–186 (the G-mean)
* H. Lee, M. Park, J. Kim, "Plankton classification on imbalanced large scale database via
  convolutional neural networks with transfer learning", ICIP 2016,
  https://doi.org/10.1109/ICIP.2016.7533053 (the L5 / Rest groups)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from pipeline.data.prior_correction import scoring_transform
from pipeline.errors import InputError
from pipeline.evaluation.binary import DEFAULT_ALERT_FRACTIONS, DEFAULT_PRECISION_LEVELS, DEFAULT_RECALL_LEVELS

PROB_TOLERANCE = 1e-4          # |Σ probs − 1| allowed (float32 softmax over 1000 classes stays well within)
RATE_KEYS = ("precision", "recall", "specificity", "f1", "g_mean", "balanced_accuracy",
             "roc_auc", "pr_auc")
COUNT_KEYS = ("support", "tp", "fp", "fn", "tn")
CURVE_POINTS = 200
# What the two easily confused fields mean, written into metrics.json beside them.
FIELD_NOTES = {
    "balanced_accuracy": "multiclass balanced accuracy = mean_recall = mean over present classes of recall "
                         "(scikit-learn balanced_accuracy_score)",
    "macro.balanced_accuracy": "mean_ovr_balanced_accuracy = mean over present classes of the one-vs-rest "
                               "(recall + specificity) / 2; not the multiclass balanced accuracy",
    "docs": "docs/metrics.md",
}

# Score buckets: top bits of the IEEE-754 double (exponent + MANTISSA_BITS), monotone in the value
# for non-negative doubles. Scores below 2**-127 share bucket 0; [1, 2) and above share the last.
MANTISSA_BITS = 4
_SHIFT = 52 - MANTISSA_BITS
_BASE = (1023 - 127) << MANTISSA_BITS
N_BUCKETS = 129 << MANTISSA_BITS


def score_bucket(scores: np.ndarray) -> np.ndarray:
    """Monotone bucket index of non-negative float64 scores (equal scores share a bucket)."""
    s = np.ascontiguousarray(scores, dtype=np.float64) + 0.0     # -0.0 -> 0.0
    bits = s.view(np.int64) >> _SHIFT
    return np.clip(bits - _BASE, 0, N_BUCKETS - 1)


# ------------------------------------------------------------------------------ pure metric math
def _div(a: float, b: float) -> Optional[float]:
    return None if b == 0 else float(a) / float(b)


def classwise_from_confusion(cm: np.ndarray) -> list[dict]:
    """Per-class counts and threshold rates from a K×K confusion matrix (rows true, cols predicted).

    precision = tp/(tp+fp) (0 for a present class never predicted, null for an absent class never
    predicted); recall = tp/support; specificity = tn/(tn+fp); F1 = 2tp/(2tp+fp+fn);
    G-mean = √(recall·specificity) and balanced accuracy = (recall+specificity)/2 in
    imbalanced-learn's per-class (one-vs-rest) sense. Rates dividing by a zero support are null.
    """
    cm = np.asarray(cm, dtype=np.int64)
    n = int(cm.sum())
    rows = []
    for c in range(cm.shape[0]):
        tp = int(cm[c, c])
        support = int(cm[c, :].sum())
        predicted = int(cm[:, c].sum())
        fn, fp = support - tp, predicted - tp
        tn = n - tp - fn - fp
        present = support > 0
        recall = _div(tp, support)
        spec = _div(tn, tn + fp)
        if predicted > 0:
            precision = tp / predicted
        else:
            precision = 0.0 if present else None
        f1 = _div(2 * tp, 2 * tp + fp + fn) if present else None
        gm = math.sqrt(recall * spec) if recall is not None and spec is not None else None
        ba = (recall + spec) / 2 if recall is not None and spec is not None else None
        rows.append(dict(label=c, support=support, tp=tp, fp=fp, fn=fn, tn=tn,
                         precision=precision, recall=recall, specificity=spec, f1=f1,
                         g_mean=gm, balanced_accuracy=ba, roc_auc=None, pr_auc=None))
    return rows


def size_groups(per_class: list[dict], train_counts: Optional[dict] = None) -> dict:
    """Mean F1 of the 5 largest classes (L5) and of the other present classes (Rest).

    Lee et al.'s L5 are the five most populous *training* classes: largest by ``train_counts``
    (training rows per class index) when given — on a balanced test set the test support cannot
    tell the head from the tail — else by test support; ties by class index. ``basis`` says which
    (``"training"`` or ``"support"``).
    """
    present = [r for r in per_class if r["support"] > 0]
    if train_counts:
        order = sorted(present, key=lambda r: (-train_counts.get(r["label"], 0), r["label"]))
    else:
        order = sorted(present, key=lambda r: (-r["support"], r["label"]))

    def mean_f1(rs):
        v = [r["f1"] for r in rs if r["f1"] is not None]
        return float(np.mean(v)) if v else None

    return {"L5": {"f1": mean_f1(order[:5]), "classes": [r["label"] for r in order[:5]]},
            "rest": {"f1": mean_f1(order[5:]), "classes": [r["label"] for r in order[5:]]},
            "basis": "training" if train_counts else "support"}


GROUP_BASIS_TEXT = {"training": "training rows", "support": "test support"}


def summarize(per_class: list[dict], cm: np.ndarray, brier: Optional[float] = None,
              keys: Sequence[str] = RATE_KEYS, train_counts: Optional[dict] = None) -> dict:
    """Macro/weighted averages, accuracy, multiclass balanced accuracy and G-mean, L5/rest F1.

    Averages run over classes with support > 0 (null rates, e.g. an undefined specificity, are
    skipped). ``g_mean`` is the geometric mean of the present classes' recalls (0 when any is 0),
    imbalanced-learn's multiclass ``geometric_mean_score``. ``groups``: :func:`size_groups`, L5 by
    ``train_counts`` (training rows per class) when given, else by support.
    """
    cm = np.asarray(cm, dtype=np.int64)
    n = int(cm.sum())
    present = [r for r in per_class if r["support"] > 0]
    macro, weighted = {}, {}
    for k in keys:
        vals = [(r[k], r["support"]) for r in present if r.get(k) is not None]
        macro[k] = float(np.mean([v for v, _ in vals])) if vals else None
        wsum = sum(w for _, w in vals)
        weighted[k] = float(sum(v * w for v, w in vals) / wsum) if wsum else None
    recalls = np.array([r["recall"] for r in present], dtype=np.float64)
    if len(recalls) == 0:
        g_mean = None
    elif np.any(recalls == 0):
        g_mean = 0.0
    else:
        g_mean = float(np.exp(np.mean(np.log(recalls))))
    sizes = [r["support"] for r in present]
    out = dict(
        n_rows=n,
        n_classes=int(cm.shape[0]),
        n_present=len(present),
        rho=(max(sizes) / min(sizes)) if sizes else None,
        accuracy=_div(int(np.trace(cm)), n),
        balanced_accuracy=float(np.mean(recalls)) if len(recalls) else None,
        mean_recall=float(np.mean(recalls)) if len(recalls) else None,
        mean_ovr_balanced_accuracy=macro.get("balanced_accuracy"),
        g_mean=g_mean,
        brier=brier,
        macro=macro,
        weighted=weighted,
        groups=size_groups(per_class, train_counts),
        confusion_matrix=cm.tolist(),
        per_class=per_class,
        field_notes=FIELD_NOTES,
    )
    return out


def group_contributions(scores: np.ndarray, pos: np.ndarray, neg: np.ndarray, pos_above: int,
                        neg_above: int):
    """Exact AUC and AP contributions of one group of (score, pos, neg) rows (duplicates allowed).

    ``pos_above``/``neg_above``: positives/negatives of the class scoring strictly above every score in the group.
    Returns ``(distinct scores descending, pos_k, neg_k, TP_k, FP_k, auc2, ap_sum)`` with
    ``auc2 = Σ neg_k·(2·TP_{<k} + pos_k)`` (an exact integer: AUC = Σ auc2 / (2·P·N)) and
    ``ap_sum = Σ pos_k·TP_k/(TP_k+FP_k)`` (AP = Σ ap_sum / P).
    """
    uniq, inv = np.unique(np.asarray(scores, dtype=np.float64) + 0.0, return_inverse=True)
    p = np.bincount(inv, weights=pos, minlength=len(uniq)).astype(np.int64)[::-1]
    q = np.bincount(inv, weights=neg, minlength=len(uniq)).astype(np.int64)[::-1]
    s = uniq[::-1]
    tp = pos_above + np.cumsum(p)
    fp = neg_above + np.cumsum(q)
    auc2 = int(np.sum(q * (2 * (tp - p) + p)))
    hit = p > 0
    ap_sum = float(np.sum(p[hit] * (tp[hit] / (tp[hit] + fp[hit]))))
    return s, p, q, tp, fp, auc2, ap_sum


def threshold_metric(name: str, tp, fp, n_pos: int, n_neg: int):
    """Binary metric at thresholds from TP/FP counts (arrays): f1, balanced_accuracy, g_mean, accuracy."""
    tp = np.asarray(tp, dtype=np.float64)
    fp = np.asarray(fp, dtype=np.float64)
    fn, tn = n_pos - tp, n_neg - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "f1":
            return np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        tpr = tp / n_pos if n_pos else np.zeros_like(tp)
        tnr = tn / n_neg if n_neg else np.zeros_like(tp)
        if name == "balanced_accuracy":
            return (tpr + tnr) / 2
        if name == "g_mean":
            return np.sqrt(tpr * tnr)
        if name == "accuracy":
            return (tp + tn) / (n_pos + n_neg)
    raise InputError(f"unknown threshold metric '{name}' (f1, balanced_accuracy, g_mean, accuracy)")


TUNE_METRICS = ("f1", "balanced_accuracy", "g_mean", "accuracy")


def check_probs(probs, labels, preds: dict, k: int) -> Optional[str]:
    """Why a block of rows is invalid (NaN, negative or non-normalised probs, a class outside 0..k−1), or None."""
    if not np.all(np.isfinite(probs)):
        return f"{int(np.sum(~np.all(np.isfinite(probs), axis=1)))} row(s) with NaN or infinite probs"
    if np.any(probs < 0):
        return f"{int(np.sum(np.any(probs < 0, axis=1)))} row(s) with negative probs"
    dev = np.abs(probs.sum(axis=1) - 1.0)
    if np.any(dev > PROB_TOLERANCE):
        return (f"probs not normalised: {int(np.sum(dev > PROB_TOLERANCE))} row(s) do not sum to 1 "
                f"(worst sum {float(probs.sum(axis=1)[np.argmax(dev)]):.6g})")
    for name, arr in [("label", labels)] + list(preds.items()):
        bad = (arr < 0) | (arr >= k)
        if np.any(bad):
            return (f"{int(bad.sum())} {name}(s) outside the class range 0..{k - 1} "
                    f"(e.g. {int(arr[bad][0])})")
    return None


def plan_groups(hist_pos: np.ndarray, hist_neg: np.ndarray, classes: Sequence[int],
                target_rows: int):
    """Cut each class's buckets (highest score first) into contiguous groups of ≤ target rows.

    Returns ``(bucket_to_group (K, N_BUCKETS) int32 with -1 for unselected classes, groups)``,
    where ``groups[g] = (class, pos_above, neg_above, n_pos, n_neg)``: ``pos_above``/``neg_above`` are the
    exact positives/negatives of the class in higher buckets (a single bucket is never split, so a group
    may exceed the target) and ``n_pos``/``n_neg`` the class's totals.
    """
    k = hist_pos.shape[0]
    b2g = np.full((k, N_BUCKETS), -1, np.int32)
    groups = []
    for c in classes:
        tot = hist_pos[c] + hist_neg[c]
        n_pos, n_neg = int(hist_pos[c].sum()), int(hist_neg[c].sum())
        pos_above = neg_above = 0
        acc = 0
        current = None
        for b in np.flatnonzero(tot)[::-1]:
            if current is None or acc + tot[b] > target_rows and acc > 0:
                current = len(groups)
                groups.append([c, pos_above, neg_above, n_pos, n_neg])
                acc = 0
            b2g[c, b] = current
            acc += int(tot[b])
            pos_above += int(hist_pos[c, b])
            neg_above += int(hist_neg[c, b])
        # buckets between occupied ones map to the nearest group below: never used (no rows there)
    return b2g, [tuple(g) for g in groups]


def dedupe_pairs(cls_idx, score, pos, tot):
    """Collapse equal (class, score) pairs, summing positive and total counts."""
    order = np.lexsort((score, cls_idx))
    c, s, p, t = cls_idx[order], score[order], pos[order], tot[order]
    new = np.ones(len(c), bool)
    new[1:] = (c[1:] != c[:-1]) | (s[1:] != s[:-1])
    starts = np.flatnonzero(new)
    return c[starts], s[starts], np.add.reduceat(p, starts), np.add.reduceat(t, starts)


@dataclass(frozen=True)
class BinarySpec:
    """What the rank pass computes for two-class data (see :mod:`pipeline.evaluation.binary`)."""
    positive: int                      # class index of the positive class
    precision_levels: tuple = DEFAULT_PRECISION_LEVELS
    recall_levels: tuple = DEFAULT_RECALL_LEVELS
    alert_fractions: tuple = DEFAULT_ALERT_FRACTIONS
    alert_m: tuple = ()                # ⌈fraction · n⌉ per alert fraction, set from the row count


def classwise_table(cm: np.ndarray, names) -> list[dict]:
    """:func:`classwise_from_confusion` with each class's ``name`` where the labels were strings."""
    per_class = classwise_from_confusion(cm)
    if names is not None:
        for r in per_class:
            r["name"] = names[r["label"]]
    return per_class


def binary_section(spec: BinarySpec, per_class: list[dict], ranked: dict, names) -> dict:
    """``metrics.json["binary"]``: the positive class's AUCs and rare-event metrics."""
    pos = per_class[spec.positive]
    label = spec.positive if names is None else names[spec.positive]
    return {"positive_label": label, "positives": pos["support"], "rows": pos["support"] + pos["fp"] + pos["tn"],
            "pr_auc": pos["pr_auc"], "roc_auc": pos["roc_auc"], **ranked}


def calibration_variants(block: Optional[dict]) -> list:
    """The calibration columns a model's ``model.json["calibration"]`` block asks to score:
    ``raw`` always, ``prior_corrected`` when scoring applies the prior correction, and
    ``temperature`` (prior correction, then T) when a temperature was fitted."""
    weights, temperature = scoring_transform(block)
    out = [("raw", None, 1.0)]
    if weights is not None:
        out.append(("prior_corrected", weights, 1.0))
    if block and block.get("temperature") is not None:
        out.append(("temperature", weights, temperature))
    return out
