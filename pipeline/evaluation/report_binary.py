"""The report's rare-event section (two-class data): what a fraud or screening team reads.

Reads ``metrics.json["binary"]`` (:mod:`pipeline.evaluation.binary`) and the positive class's
exact PR-curve points (``metrics.json["pr_curves"]``). Draws the PR curve with the operating points
of the precision levels and alert fractions marked, and the alert budget: alerts raised (rows
flagged) against positives caught. Returns a report
:class:`~pipeline.evaluation.report_sections.Section` (Markdown lines, an HTML fragment and the
figures, each a :class:`~pipeline.evaluation.report_sections.Figure`), like
:mod:`pipeline.evaluation.report_calibration`.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Optional

from pipeline.evaluation.binary import alert_rows
from pipeline.evaluation.report_sections import Figure, Section

NOTE = ("The positive class is label 1, or the class with fewer rows when the labels are strings. "
        "Recall at precision p: the share of positives caught when at most a share 1 − p of the alerts "
        "may be false. Precision in the top k: the share of true positives among the rows scoring at "
        "least the ⌈k·n⌉-th highest score (ties included). All values exact, over every operating point.")


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.4f}"


def binary_rows(b: dict) -> list[tuple[str, str, str]]:
    """(metric, value, 95% interval) rows of the section's table."""
    ci = b.get("intervals") or {}

    def iv(key, level=None):
        c = ci.get(key) if level is None else (ci.get(key) or {}).get(level)
        return "" if not c else f"[{c[0]:.4f}, {c[1]:.4f}]"

    rows = [("positive class", f"{b['positive_label']} ({b['positives']} of {b['rows']} rows, "
                               f"{b['positives'] / b['rows']:.4%})", ""),
            ("PR AUC (average precision)", _fmt(b["pr_auc"]), iv("pr_auc")),
            ("ROC AUC", _fmt(b["roc_auc"]), iv("roc_auc"))]
    rows += [(f"recall at precision ≥ {k}", _fmt(v), iv("recall_at_precision", k))
             for k, v in b["recall_at_precision"].items()]
    rows += [(f"precision at recall ≥ {k}", _fmt(v), iv("precision_at_recall", k))
             for k, v in b["precision_at_recall"].items()]
    rows += [(f"precision in the top {float(k):.3%} of rows ({_alerts(b, k)} alerts)", _fmt(v),
              iv("precision_at_k", k)) for k, v in b["precision_at_k"].items()]
    return rows


def _alerts(b: dict, fraction: str) -> int:
    return alert_rows(float(fraction), b["rows"])


def plot_pr_operating_points(b: dict, curve: dict, path: Path, save, plt) -> bytes:
    """The positive class's PR curve, the precision levels' and alert fractions' points marked."""
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    ax.step(curve["recall"], curve["precision"], where="post", color="#1f77b4",
            label=f"positive class {b['positive_label']}: AP {_fmt(b['pr_auc'])}")
    ax.axhline(b["positives"] / b["rows"], color="#999", ls=":", lw=1, label="prevalence (a random ranking)")
    for k, r in b["recall_at_precision"].items():
        ax.plot([r], [float(k)], "o", ms=6, label=f"recall {r:.3f} at precision ≥ {k}")
    for k, p in b["precision_at_k"].items():
        if p is not None:
            caught = p * _alerts(b, k) / max(1, b["positives"])
            ax.plot([min(1.0, caught)], [p], "s", ms=6, label=f"top {float(k):.2%}: precision {p:.3f}")
    ax.set_xlabel("recall (share of positives caught)")
    ax.set_ylabel("precision (share of alerts that are positives)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.03)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title("Precision–recall of the positive class")
    return save(fig, path)


def plot_alert_budget(b: dict, curve: dict, path: Path, save, plt) -> bytes:
    """Alerts raised (rows flagged) against positives caught, log-scaled alerts."""
    positives = b["positives"]
    alerts, caught = [], []
    for r, p in zip(curve["recall"], curve["precision"]):
        if r > 0 and p > 0:
            caught.append(r * positives)
            alerts.append(r * positives / p)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot(alerts, caught, marker=".", ms=3, color="#1f77b4", label="this model")
    top = max(alerts + [float(positives)])
    rate = positives / b["rows"]
    ax.plot([1, top], [rate, top * rate], color="#999", ls=":", label="random alerts")
    ax.plot([1, positives, top], [1, positives, positives], color="#2ca02c", ls="--", lw=1, label="perfect ranking")
    for k, p in b["precision_at_k"].items():
        if p is not None:
            m = _alerts(b, k)
            ax.plot([m], [p * m], "s", ms=6, label=f"top {float(k):.2%}: {p * m:.0f} of {positives} caught")
    ax.set_xscale("log")
    ax.set_xlabel("alerts raised (rows flagged, highest scores first)")
    ax.set_ylabel("positives caught")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Alert budget")
    return save(fig, path)


def binary_section(metrics: dict, figs: Path, save, plt) -> Optional[Section]:
    """Markdown lines, HTML and the figures of ``metrics["binary"]`` (None for multiclass data)."""
    b = metrics.get("binary")
    if not b:
        return None
    index = next((r["label"] for r in metrics["per_class"] if r.get("name", r["label"]) == b["positive_label"]),
                 b["positive_label"])
    curve = (metrics.get("pr_curves") or {}).get(str(index))
    e = html.escape
    rows = binary_rows(b)
    reps = (b.get("intervals") or {}).get("replicates")
    note = NOTE + (f" Intervals: 95%, Poisson bootstrap of the test rows ({reps} replicates); they cover the "
                   "test sample, not training randomness (run.seeds for that)." if reps else "")
    md = ["", "## Rare events: the positive class", "", note, "", "| metric | value | 95% interval |",
          "| --- | --- | --- |"]
    md += [f"| {name} | {v} | {c} |" for name, v, c in rows]
    parts = ["<h2>Rare events: the positive class</h2>", f"<p class='cap'>{e(note)}</p>",
             "<table id='binary'><tr><th>metric</th><th>value</th><th>95% interval</th></tr>"]
    parts += [f"<tr><td>{e(name)}</td><td>{e(v)}</td><td>{e(c)}</td></tr>" for name, v, c in rows]
    parts.append("</table>")
    figures = []
    if curve:
        figures = [Figure("PR curve with operating points", "pr_operating_points.png",
                          plot_pr_operating_points(b, curve, figs / "pr_operating_points.png", save, plt),
                          "Exact curve points (thinned to ≤200); circles: the best recall at each precision level, "
                          "drawn at the level; squares: the alert fractions."),
                   Figure("Alert budget", "alert_budget.png",
                          plot_alert_budget(b, curve, figs / "alert_budget.png", save, plt),
                          "How many positives the analysts see for the alerts they review; dotted: alerts at random, "
                          "dashed: a perfect ranking.")]
    for f in figures:
        md += ["", f"![{f.title}](figures/{f.file})", "", f.caption]
        parts += [f"<img alt='{e(f.title)}' src='data:image/png;base64,{base64.b64encode(f.png).decode('ascii')}'>",
                  f"<p class='cap'>{e(f.caption)}</p>"]
    return Section(md, "\n".join(parts), figures)


__all__ = ["binary_section", "binary_rows", "plot_pr_operating_points", "plot_alert_budget"]
