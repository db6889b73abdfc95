"""A report people can read: ``report.md`` plus a self-contained ``report.html``.

Built from ``metrics.json`` (the evaluate stage's output): a summary (accuracy beside the
class-wise metrics the survey asks for), the per-class table sorted by class size with each
class's ρ_c = n_max / n_c, and plots — per-class F1 and recall against class size (log x), the
PR curves of the rarest classes (their thinned points come from the Spark ranking pass; only
these few points reach the driver), a row-normalised confusion-matrix heatmap ordered by class
size, before/after threshold moving when ``adjusted`` exists, and the profile stage's class
distribution chart when given. Figures are PNG files under ``figures/`` for the Markdown and
base64-embedded in the HTML, so the HTML is one file that can be mailed around.

This module only renders: the bootstrap intervals and any PR curves ``metrics.json`` lacks are
computed by the evaluate stage (:func:`pipeline.evaluation.evaluate.report_inputs`) and handed to
:func:`render_report` as :class:`ReportInputs`.
"""
from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.errors import InputError
from pipeline.evaluation.intervals import LOW_SUPPORT, wilson_per_class
from pipeline.evaluation.metric_math import GROUP_BASIS_TEXT
from pipeline.evaluation.report_binary import binary_section
from pipeline.evaluation.report_calibration import calibration_section
from pipeline.evaluation.report_sections import (
    Cell,
    Figure,
    Section,
    SORT_SCRIPT,
    comparison_section,
    fixed,
    seed_spread_section,
    errors_section,
    plot_training,
    sortable_table,
    threshold_section,
    what_ran,
)
from pipeline.io import METHOD_SUMMARY_FILE, local_path, read_json, write_text
from pipeline.prep.profile import MINORITY_RULE, describe_counts, plot_distribution


FIG_DIR = "figures"


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if np.isnan(v):
            return "—"
        return fixed(v, digits)
    return str(v)


def _plt():
    # deferred: matplotlib is slow to import
    import matplotlib

    matplotlib.use("Agg")
    # deferred: matplotlib is slow to import
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    data = buf.getvalue()
    path.write_bytes(data)
    return data


def _name(r: dict) -> str:
    return f"{r['label']}" + (f" ({r['name']})" if r.get("name") not in (None, "") and
                              str(r.get("name")) != str(r["label"]) else "")


# ------------------------------------------------------------------------------ figures
def plot_vs_size(per_class: list[dict], path: Path, sizes: Optional[dict] = None) -> bytes:
    """``sizes``: training rows per class for the x axis (default: the test support)."""
    plt = _plt()
    present = [r for r in per_class if r["support"] > 0]
    x = np.array([(sizes or {}).get(r["label"], r["support"]) for r in present], float)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, marker, color in (("f1", "o", "tab:blue"), ("recall", "^", "tab:orange")):
        y = np.array([np.nan if r.get(key) is None else r[key] for r in present], float)
        ax.scatter(x, y, marker=marker, s=22, alpha=0.75, color=color, label=key.upper() if key == "f1" else key)
    ax.set_xscale("log")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("training rows of the class (log scale)" if sizes else
                  "class size in the evaluated data (support, log scale)")
    ax.set_ylabel("score")
    ax.set_title("Per-class F1 and recall against class size")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_pr_curves(curves: dict, per_class: list[dict], path: Path, sizes: Optional[dict] = None) -> bytes:
    plt = _plt()
    by = {r["label"]: r for r in per_class}
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for c, cur in sorted(curves.items(), key=lambda kv: by[int(kv[0])]["support"]):
        r = by[int(c)]
        tr = f"train {sizes[r['label']]}, " if sizes and r["label"] in sizes else ""
        ax.plot(cur["recall"], cur["precision"], drawstyle="steps-pre", lw=1.6,
                label=f"class {_name(r)}: {tr}test {r['support']}, AP={_fmt(r.get('pr_auc'), 3)}")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(0, 1.03)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision–recall curves of the rarest classes (one-vs-rest)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, path)


def plot_confusion(cm: np.ndarray, per_class: list[dict], path: Path, sizes: Optional[dict] = None) -> bytes:
    """Row-normalised confusion matrix, classes ordered by size (training rows when ``sizes`` is
    given, else test support; ties by class index), every class labelled; legible for ~100 classes."""
    plt = _plt()
    # deferred: matplotlib is slow to import
    from matplotlib.colors import PowerNorm

    cm = np.asarray(cm, float)
    k = cm.shape[0]
    order = sorted(range(k), key=lambda c: (-(sizes or {}).get(c, 0), -per_class[c]["support"], c))
    m = cm[np.ix_(order, order)]
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = m / m.sum(axis=1, keepdims=True)
    side = float(np.clip(3 + 0.09 * k, 5, 14))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(norm), cmap=cmap, norm=PowerNorm(0.5, vmin=0, vmax=1),
                   interpolation="nearest", aspect="equal")
    ticks = list(range(k))                       # every class labelled (none skipped)
    labels = [str(order[i]) for i in ticks]
    fs = 9 if k <= 20 else 7 if k <= 50 else 5
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, rotation=90, fontsize=fs)
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=fs)
    if k <= 15:
        for i in range(k):
            for j in range(k):
                if not np.isnan(norm[i, j]) and norm[i, j] > 0:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] < 0.5 else "black")
    ax.set_xlabel("predicted class (ordered by " + ("training rows" if sizes else "test support")
                  + ", largest first; ties by class index)")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix, row-normalised (diagonal = recall); grey: class absent")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class (sqrt scale)")
    return _save(fig, path)


def plot_threshold_moving(metrics: dict, path: Path, sizes: Optional[dict] = None) -> bytes:
    plt = _plt()
    adj = metrics["adjusted"]
    names = ["accuracy", "balanced accuracy", "G-mean", "macro F1", "macro precision", "L5 F1", "Rest F1"]

    def vals(m):
        g = m["groups"]     # L5 as metrics.json has it: by training rows when known
        return [m.get("accuracy"), m.get("balanced_accuracy"), m.get("g_mean"), m["macro"].get("f1"),
                m["macro"].get("precision"), g["L5"]["f1"], g["rest"]["f1"]]

    raw, new = vals(metrics), vals(adj)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    x = np.arange(len(names))
    a1.bar(x - 0.2, [np.nan if v is None else v for v in raw], 0.4, label="raw (pred)")
    a1.bar(x + 0.2, [np.nan if v is None else v for v in new], 0.4, label="threshold moving (pred_adjusted)")
    a1.set_xticks(x)
    a1.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    a1.set_ylim(0, 1.05)
    a1.set_title("Before / after threshold moving")
    a1.legend(fontsize=8)
    a1.grid(True, axis="y", alpha=0.3)
    present = [r for r in metrics["per_class"] if r["support"] > 0]
    by_adj = {r["label"]: r for r in adj["per_class"]}
    xs = np.array([(sizes or {}).get(r["label"], r["support"]) for r in present], float)
    a2.scatter(xs, [r["recall"] for r in present], s=18, alpha=0.7, label="recall, raw")
    a2.scatter(xs, [by_adj[r["label"]]["recall"] for r in present], s=18, alpha=0.7, marker="^",
               label="recall, adjusted")
    a2.set_xscale("log")
    a2.set_ylim(-0.03, 1.03)
    a2.set_xlabel("training rows of the class (log scale)" if sizes else "class size (support, log scale)")
    a2.set_title("Per-class recall before / after")
    a2.grid(True, alpha=0.3)
    a2.legend(fontsize=8)
    return _save(fig, path)


def plot_distribution_json(dist: dict, path: Path) -> bytes:
    """The profile stage's chart of a ``distribution.json`` dict: the minority classes (the
    profile's :data:`~pipeline.prep.profile.MINORITY_RULE`) in red."""
    if "minority_classes" not in dist:
        dist = describe_counts({c["label"]: c["count"] for c in dist["classes"]})
    plot_distribution(dist, path)
    return path.read_bytes()


def _distribution_figure(distribution, figs: Path) -> Optional[bytes]:
    """The profile stage's chart: a PNG path, a distribution.json path / dict, or the profile dir."""
    if distribution is None:
        return None
    if isinstance(distribution, dict):
        return plot_distribution_json(distribution, figs / "class_distribution.png")
    p = local_path(distribution)
    if p.is_dir():
        png, js = p / "class_distribution.png", p / "distribution.json"
        p = png if png.is_file() else js
    if not p.is_file():
        raise InputError(f"distribution not found: {distribution}")
    if p.suffix.lower() == ".png":
        data = p.read_bytes()
        (figs / "class_distribution.png").write_bytes(data)
        return data
    try:
        dist = read_json(p)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"distribution {distribution} is neither a PNG nor distribution.json") from None
    return plot_distribution_json(dist, figs / "class_distribution.png")


# ------------------------------------------------------------------------------ the report
def _ci(ci) -> str:
    return "—" if not ci or ci[0] is None else f"[{fixed(ci[0])}, {fixed(ci[1])}]"


def _table(metrics: dict, sizes: Optional[dict] = None, boot: Optional[dict] = None):
    """Per-class rows of :class:`Cell` values, largest class first; and which rows are low-support.

    ``sizes``: training rows per class (a column, and ρ_c and the order use it); ``boot``: the
    bootstrap intervals (an F1 interval column). Recall and precision intervals are Wilson's.
    """
    per_class = metrics["per_class"]
    size = (lambda r: sizes.get(r["label"], 0)) if sizes else (lambda r: r["support"])
    present = [size(r) for r in per_class if r["support"] > 0 and size(r) > 0]
    nmax = max(present) if present else 0
    adj = {r["label"]: r for r in metrics["adjusted"]["per_class"]} if "adjusted" in metrics else None
    wil = {w["label"]: w for w in wilson_per_class(per_class)}
    f1_ci = boot["per_class"]["f1_ci"] if boot else None
    head = ["class", "support"] + (["train rows"] if sizes else []) + [
        "ρ_c", "precision", "precision 95% CI", "recall", "recall 95% CI", "F1"] + (["F1 95% CI"] if boot else []) + [
        "specificity", "G-mean", "ROC AUC", "PR AUC"] + (["recall (adj.)", "F1 (adj.)"] if adj else [])
    keys = ["class", "support"] + (["train"] if sizes else []) + [
        "rho", "precision", "precision_lo", "recall", "recall_lo", "f1"] + (["f1_lo"] if boot else []) + [
        "specificity", "gmean", "roc_auc", "pr_auc"] + (["recall_adj", "f1_adj"] if adj else [])
    rows, low = [], []
    for r in sorted(per_class, key=lambda r: (-size(r), -r["support"], r["label"])):
        c = r["label"]
        rho = nmax / size(r) if size(r) else None
        w = wil[c]
        flag = "⚠ " if w["low_support"] else ""
        row = [Cell(flag + _name(r), c), Cell(str(r["support"]), r["support"])]
        if sizes:
            row.append(Cell(str(size(r)), size(r)))
        row += [Cell(_fmt(rho, 1), rho), Cell(_fmt(r["precision"]), r["precision"]),
                Cell(_ci(w["precision_ci"]), w["precision_ci"][0]), Cell(_fmt(r["recall"]), r["recall"]),
                Cell(_ci(w["recall_ci"]), w["recall_ci"][0]), Cell(_fmt(r["f1"]), r["f1"])]
        if boot:
            row.append(Cell(_ci(f1_ci[c]), f1_ci[c][0]))
        row += [Cell(_fmt(r["specificity"]), r["specificity"]), Cell(_fmt(r["g_mean"]), r["g_mean"]),
                Cell(_fmt(r["roc_auc"]), r["roc_auc"]), Cell(_fmt(r["pr_auc"]), r["pr_auc"])]
        if adj:
            row += [Cell(_fmt(adj[c]["recall"]), adj[c]["recall"]), Cell(_fmt(adj[c]["f1"]), adj[c]["f1"])]
        rows.append(row)
        low.append("low" if w["low_support"] else "")
    return head, keys, rows, low


def _summary(metrics: dict, boot: Optional[dict] = None) -> list[tuple[str, str, str]]:
    adj = metrics.get("adjusted")
    b = boot or {}
    by = GROUP_BASIS_TEXT[metrics["groups"].get("basis", "support")]

    def group(m, g):
        return m["groups"][g]["f1"]     # the same L5 as metrics.json, summary.json and MLflow

    def both(get):
        return _fmt(get(metrics)), (_fmt(get(adj)) if adj else "")

    items = [
        ("classes at F1 = 0", *both(lambda m: str(sum(1 for r in m["per_class"] if r["support"] > 0 and r["f1"] == 0)))),
        ("rows evaluated", str(metrics["n_rows"]), ""),
        ("classes (present / total)", f"{metrics['n_present']} / {metrics['n_classes']}", ""),
        ("ρ in the evaluated data (max/min support)", _fmt(metrics.get("rho"), 1), ""),
        ("accuracy", *both(lambda m: m["accuracy"])),
        ("balanced accuracy = mean recall over classes (balanced_accuracy)", *both(lambda m: m["balanced_accuracy"])),
        ("mean one-vs-rest balanced accuracy, mean of (recall + specificity)/2 (macro.balanced_accuracy)",
         *both(lambda m: m["macro"].get("balanced_accuracy"))),
        ("  95% CI (stratified bootstrap)", _ci(b.get("balanced_accuracy_ci")), ""),
        ("G-mean (geometric mean of recalls)", *both(lambda m: m["g_mean"])),
        ("macro F1", *both(lambda m: m["macro"]["f1"])),
        ("  95% CI (stratified bootstrap)", _ci(b.get("macro_f1_ci")), ""),
        ("weighted F1", *both(lambda m: m["weighted"]["f1"])),
        ("macro ROC AUC (one-vs-rest, exact)", _fmt(metrics["macro"]["roc_auc"]), ""),
        ("macro PR AUC (average precision, exact)", _fmt(metrics["macro"]["pr_auc"]), ""),
        ("Brier score", _fmt(metrics.get("brier")), ""),
        (f"F1 of the 5 largest classes (L5, by {by})", *both(lambda m: group(m, "L5"))),
        ("F1 of the other classes (Rest)", *both(lambda m: group(m, "rest"))),
    ]
    return items


def learned_costs_section(predictions, per_class: list[dict]) -> Optional[Section]:
    """The learned (CoSen) or searched (cost_search) class costs of the model that made
    ``predictions`` (its ``_predictions.json`` names the model directory), as Markdown lines and
    an HTML fragment; None when the model has no cost vector (or the predictions are not local)."""
    if predictions is None:
        return None
    side = local_path(predictions) / "_predictions.json"
    if not side.is_file():
        return None
    model_dir = read_json(side).get("model_dir")
    if not model_dir:
        return None
    summary = local_path(model_dir) / METHOD_SUMMARY_FILE    # written by training beside method_state.pt
    if not summary.is_file():
        return None
    saved = read_json(summary)
    method, state = saved.get("method"), saved.get("state") or {}
    if "costs" not in state:
        return None
    costs = np.asarray(state["costs"], dtype=float).ravel()
    names = {r["label"]: _name(r) for r in per_class}
    if method == "cost_search":
        note = (f"Searched by differential evolution on the validation split ({state.get('val_rows', '?')} rows): "
                f"{state.get('metric', '?')} {_fmt(state.get('score'))} with these costs, "
                f"{_fmt(state.get('baseline_score'))} with the plain argmax.")
    else:
        note = (f"Learned jointly with the weights (CoSen, {len(state.get('updates', []))} cost updates); "
                "prediction scales the softmax outputs by these costs.")
    rows = [(names.get(i, str(i)), f"{c:.4g}") for i, c in enumerate(costs)]
    md = ["", f"## Class costs ({method})", "", note, "", "| class | cost ξ_c |", "| --- | --- |"]
    md += [f"| {n} | {c} |" for n, c in rows]
    e = html.escape
    frag = (f"<h2>Class costs ({e(method)})</h2><p class='cap'>{e(note)}</p><table><tr><th>class</th>"
            "<th>cost ξ<sub>c</sub></th></tr>" + "".join(f"<tr><td>{e(n)}</td><td>{e(c)}</td></tr>" for n, c in rows)
            + "</table>")
    return Section(md, frag)


@dataclass
class ReportInputs:
    """What the evaluate stage computed for the report beyond ``metrics.json``: the bootstrap
    ``intervals`` (:func:`pipeline.evaluation.intervals.bootstrap_intervals`, or None), the PR
    ``curves`` to draw (``{class: {"recall": [...], "precision": [...]}}``) and what their classes
    are rarest by (``"training rows"`` or ``"test support"``)."""
    intervals: Optional[dict] = None
    curves: dict = field(default_factory=dict)
    curves_by: str = "test support"


def render_report(metrics: dict, out_dir, inputs: ReportInputs, *, run: Optional[dict] = None,
                  sizes: Optional[dict] = None, distribution=None, timings: Optional[dict] = None,
                  predictions=None) -> dict:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` into ``out_dir`` from what the
    evaluate stage computed; no Spark job runs here.

    ``run``: the run directory's files (:func:`pipeline.evaluation.report_sections.read_run`);
    ``sizes``: training rows per class; ``distribution``: the profile stage's chart (PNG), its
    ``distribution.json`` (path or dict), or its output directory; ``predictions``: the table, whose
    model's learned costs get a section. Returns the paths written (and writes ``intervals.json``
    beside the report when there are intervals).
    """
    run = run or {}
    out = local_path(out_dir)
    figs = out / FIG_DIR
    figs.mkdir(parents=True, exist_ok=True)
    boot = inputs.intervals
    figures = _figures(metrics, run=run, sizes=sizes, curves=inputs.curves, by=inputs.curves_by,
                       distribution=distribution, figs=figs)
    sections = _sections(metrics, run=run, sizes=sizes, boot=boot, timings=timings, predictions=predictions,
                         figs=figs) + [_figure_section(figures)]
    title = "Class-wise evaluation report"
    write_text(out / "report.md", "\n".join([f"# {title}", ""] + [ln for sec in sections for ln in sec.md]) + "\n")
    parts = [_html_head(title)] + [sec.html for sec in sections] + [SORT_SCRIPT, "</body></html>"]
    write_text(out / "report.html", "\n".join(parts) + "\n")
    if boot:
        (out / "intervals.json").write_text(json.dumps(boot))
    return {"markdown": str(out / "report.md"), "html": str(out / "report.html"),
            "figures": [str(figs / f.file) for sec in sections for f in sec.figures]}


def _figures(metrics: dict, *, run: dict, sizes: Optional[dict], curves: dict, by: str, distribution,
             figs: Path) -> list[Figure]:
    """The report's closing figures, each drawn into ``figs``."""
    per_class = metrics["per_class"]
    figures = []
    history = (run.get("train_summary") or {}).get("history") if run else None
    train_png = plot_training(history, figs / "training.png", _save, _plt()) if history else None
    if train_png is not None:
        figures.append(Figure("Training curves", "training.png", train_png,
                        "Per epoch of the final training phase: train loss, validation macro F1 and balanced "
                        "accuracy, and each class's validation recall (rows: class index 0 at the top; grey: "
                        "class absent from validation)."))
    figures.append(Figure("Per-class F1 and recall vs class size", "f1_recall_vs_size.png",
                    plot_vs_size(per_class, figs / "f1_recall_vs_size.png", sizes),
                    "Each point is a class; small classes sit on the left. The survey's point: "
                    "accuracy hides what happens here."))
    if curves:
        figures.append(Figure("PR curves of the rarest classes", "pr_curves.png",
                        plot_pr_curves(curves, per_class, figs / "pr_curves.png", sizes),
                        f"The {len(curves)} rarest classes by {by} (ties broken by class index). Exact curve "
                        "points (thinned to ≤200 per class in Spark); the step area is the class's average precision."))
    figures.append(Figure("Confusion matrix (row-normalised)", "confusion_matrix.png",
                    plot_confusion(np.array(metrics["confusion_matrix"]), per_class,
                                   figs / "confusion_matrix.png", sizes),
                    "Rows: true class, columns: predicted class, both ordered by class size."))
    if "adjusted" in metrics:
        figures.append(Figure("Before / after threshold moving", "threshold_moving.png",
                        plot_threshold_moving(metrics, figs / "threshold_moving.png", sizes),
                        "Same scores, new decisions (pred_adjusted): no retraining."))
    if sizes:   # the training data's distribution (after any protocol), not the source's
        distribution = describe_counts({c: n for c, n in sizes.items() if n > 0})
    dist_png = _distribution_figure(distribution, figs)
    if dist_png is not None:
        title = "Class distribution of the training data" if sizes else "Class distribution (profile stage)"
        figures.append(Figure(title, "class_distribution.png", dist_png,
                              f"Class sizes, log scale. Red: the minority classes, {MINORITY_RULE}."))
    return figures


def _sections(metrics: dict, *, run: dict, sizes: Optional[dict], boot: Optional[dict], timings: Optional[dict],
              predictions, figs: Path) -> list[Section]:
    """Every section before the figures, in the report's order."""
    names = {r["label"]: _name(r) for r in metrics["per_class"]}
    rule = run.get("config", {}).get("evaluate", {}).get("threshold_moving") if run else None
    found = [what_ran(run, metrics, timings) if run else None,
             seed_spread_section(run["seed_spread"]) if run.get("seed_spread") else None,
             comparison_section(run["comparison"], names, figs, _save, _plt()) if run.get("comparison") else None,
             _summary_section(metrics, boot),
             binary_section(metrics, figs, _save, _plt()),
             errors_section(metrics, names),
             threshold_section(metrics, rule),
             calibration_section(metrics, figs, _save, _plt()),
             _per_class_section(metrics, sizes, boot),
             learned_costs_section(predictions, metrics["per_class"])]
    return [sec for sec in found if sec is not None]


def _summary_section(metrics: dict, boot: Optional[dict]) -> Section:
    """The headline table, with the threshold-moved column when there is one."""
    has_adj = "adjusted" in metrics
    summary = _summary(metrics, boot)
    md = ["", "## Summary", "", f"Predictions column: `{metrics.get('pred_col', 'pred')}`"
          + ("; threshold moving in `pred_adjusted`." if has_adj else "."), "",
          "| metric | value |" + (" after threshold moving |" if has_adj else ""),
          "| --- | --- |" + (" --- |" if has_adj else "")]
    md += [f"| {name} | {v} |" + (f" {a} |" if has_adj else "") for name, v, a in summary]
    e = html.escape
    parts = ["<h2>Summary</h2><table><tr><th>metric</th><th>value</th>"
             + ("<th>after threshold moving</th>" if has_adj else "") + "</tr>"]
    parts += [f"<tr><td>{e(name)}</td><td>{e(v)}</td>" + (f"<td>{e(a)}</td>" if has_adj else "") + "</tr>"
              for name, v, a in summary]
    parts.append("</table>")
    return Section(md, "\n".join(parts))


def _per_class_section(metrics: dict, sizes: Optional[dict], boot: Optional[dict]) -> Section:
    """The per-class table, sorted by class size (sortable in the HTML)."""
    head, keys, cells, low = _table(metrics, sizes, boot)
    note = ("ρ_c = training rows of the largest class / training rows of this class" if sizes else
            "ρ_c = size of the largest class / size of this class") + (
        "; — : undefined (e.g. a class absent from the labels). Precision and recall intervals: Wilson (95%); "
        "F1 intervals: stratified bootstrap over the test rows. ⚠: fewer than "
        f"{LOW_SUPPORT} test rows, a noisy estimate.")
    n_low = sum(1 for x in low if x)
    md = ["", "## Per-class metrics (sorted by class size)", "", note, "",
          "| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    md += ["| " + " | ".join(cell.text for cell in r) + " |" for r in cells]
    e = html.escape
    parts = ["<h2>Per-class metrics (sorted by class size; click a column to sort)</h2>"
             f"<p class='cap'>{e(note)}</p>"
             + (f"<p class='warn'>⚠ {n_low} classes have fewer than {LOW_SUPPORT} test rows (shaded).</p>"
                if n_low else ""),
             sortable_table(head, cells, table_id="per-class", keys=keys, row_class=low)]
    return Section(md, "\n".join(parts))


def _figure_section(figures: list[Figure]) -> Section:
    e = html.escape
    md = [ln for f in figures for ln in ("", f"## {f.title}", "", f"![{f.title}]({FIG_DIR}/{f.file})", "", f.caption)]
    parts = [f"<h2>{e(f.title)}</h2><img alt='{e(f.title)}' "
             f"src='data:image/png;base64,{base64.b64encode(f.png).decode('ascii')}'>"
             f"<p class='cap'>{e(f.caption)}</p>" for f in figures]
    return Section(md, "\n".join(parts), figures)


def _html_head(title: str) -> str:
    e = html.escape
    return "\n".join([f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
                      "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}"
                      "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
                      "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
                      "th{background:#f0f0f0;position:sticky;top:0}td:first-child,th:first-child{text-align:left}"
                      "th[data-key]:hover{background:#dde}tr.low td{background:#fff4e0}.warn{color:#a05000}"
                      "img{max-width:100%;border:1px solid #eee}.cap{color:#555;font-size:13px}"
                      ".scroll{max-height:600px;overflow:auto;display:inline-block}"
                      "</style></head><body>", f"<h1>{e(title)}</h1>"])
