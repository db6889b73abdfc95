"""The report's run-level sections: what ran, training curves, confusions, threshold moving and
the method-vs-reference comparison.

Everything here reads files a run directory already holds — ``config.json``, the sample stage's
``manifest.json``, ``train/train_summary.json`` (per-epoch history written by training),
``comparison/comparison.json`` — so the evaluation package never imports the training code.
Each section is a :class:`Section`: Markdown lines, an HTML fragment and its :class:`Figure` list.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from pipeline.data.describe_source import describe_source
from pipeline.evaluation.intervals import LOW_SUPPORT
from pipeline.evaluation.seed_spread import HEADLINE_NAMES
from pipeline.io import read_json
from pipeline.prep.sampling import training_counts


class Figure(NamedTuple):
    """A figure the report drew: its title, file name under ``figures/``, PNG bytes and caption."""
    title: str
    file: str
    png: bytes
    caption: str


class Cell(NamedTuple):
    """A cell of a sortable table: the text shown and the value it sorts by (None sorts last)."""
    text: str
    sort: object


@dataclass
class Section:
    """One part of the report in both renderings: Markdown lines, an HTML fragment, and the figures
    it wrote under ``figures/``."""
    md: list[str]
    html: str
    figures: list[Figure] = field(default_factory=list)


THRESHOLD_RULES = {
    "prior": ("threshold moving by class priors (Buda et al.)",
              "each softmax output p_c is divided by the class's prior π_c (its share of the unique training "
              "examples) and the largest ratio is predicted: rare classes get a lower bar, so their recall "
              "rises at the cost of some precision (and accuracy) on the large classes. Same scores, no retraining."),
    "cost": ("cost threshold", "binary decision at the threshold c10/(c10+c01) given by evaluate.cost."),
    "tuned": ("tuned threshold", "the binary threshold that maximises evaluate.tune_metric on the validation split."),
}


def fixed(v: float, d: int = 3, signed: bool = False) -> str:
    """``v`` with ``d`` decimals (a leading ``+`` when ``signed``); a value that rounds to zero prints
    as ``0.000``, never ``-0.000``."""
    text = f"{v:+.{d}f}" if signed else f"{v:.{d}f}"
    return f"{0:.{d}f}" if float(text) == 0 else text


def _f(v, d: int = 3) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "—"
    return fixed(v, d)


def _ci(ci, d: int = 3) -> str:
    if not ci or ci[0] is None:
        return "—"
    return f"[{fixed(ci[0], d)}, {fixed(ci[1], d)}]"


def _signed(v, d: int = 3) -> str:
    return "—" if v is None else fixed(v, d, signed=True)


def per_class_range(values: list) -> str:
    """``"30 per class"``, or ``"10 to 1000 per class"`` when the classes differ."""
    lo, hi = min(values), max(values)
    return f"{lo} per class" if lo == hi else f"{lo} to {hi} per class"


def _sd(block: dict, key: str) -> str:
    """`` (sd 0.012)``: the seed-to-seed standard deviation of ``key`` in a comparison block, if any."""
    s = (block.get("seed_spread") or {}).get(key)
    return "" if not s or s.get("sd") is None else f" (sd {s['sd']:.3f})"


def _n(v) -> str:
    return "—" if v is None else f"{v:,}"


def read_run(run_dir) -> dict:
    """What a run directory says about itself (missing files give empty entries)."""
    d = Path(run_dir)

    def js(p):
        return read_json(p) if p.is_file() else None

    return {"config": js(d / "config.json") or {}, "manifest": js(d / "sample" / "manifest.json"),
            "pretrain_manifest": js(d / "sample_pretrain" / "manifest.json"),
            "train_summary": js(d / "train" / "train_summary.json"),
            "comparison": js(d / "comparison" / "comparison.json"),
            "seed_spread": js(d / "seed_spread" / "spread.json"),
            "ingest": js(d / "source" / "ingest.json")}


def seed_spread_section(sp: dict) -> Section:
    """The headline metrics of every training seed, their mean, standard deviation and range."""
    e = html.escape
    seeds = [str(x) for x in sp["seeds"]]
    names = HEADLINE_NAMES | {"adjusted_macro_f1": "macro F1 after threshold moving"}
    head = ["metric"] + [f"seed {x}" for x in seeds] + ["mean", "sd", "min – max"]
    rows = [[names.get(k, k)] + [_f(sp["per_seed"][x].get(k)) for x in seeds]
            + [_f(v["mean"]), _f(v["sd"]), f"{_f(v['min'])} – {_f(v['max'])}"] for k, v in sp["metrics"].items()]
    note = (f"The same model trained with {len(seeds)} seeds (initial weights, delivery order, dropout) on the same "
            f"split and training set. The rest of this report is seed {seeds[0]}'s; sd is the sample standard "
            "deviation over the seeds.")
    md = ["", "## Across training seeds", "", note, "", "| " + " | ".join(head) + " |",
          "| " + " | ".join("---" for _ in head) + " |"] + ["| " + " | ".join(r) + " |" for r in rows]
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return Section(md, f"<h2 id='seeds'>Across training seeds</h2><p class='cap'>{e(note)}</p><table><tr>"
                + "".join(f"<th>{e(h)}</th>" for h in head) + f"</tr>{body}</table>")


def interval_basis(c: dict) -> str:
    """In words, what a comparison's intervals cover (``comparison.json`` ``covers``)."""
    if c.get("covers") == "seeds and test rows":
        s = c["seeds"]
        return (f"two-level bootstrap over the training seeds ({s['method']} and {s['reference']} trained "
                "models) and, paired across the models, the test rows")
    return ("stratified paired bootstrap over the test rows only: each model was trained once, so the "
            "intervals do not cover training randomness, and a run with another seed can move the numbers "
            "by more than they show")


def train_counts(run: dict) -> Optional[dict]:
    """Training rows per class (the training split after any protocol), from the sample manifest."""
    return training_counts(run.get("manifest"))


def what_ran(run: dict, metrics: dict, timings: Optional[dict]) -> Section:
    cfg = run["config"]
    data, tr, ev, sm = cfg.get("data", {}), cfg.get("train", {}), cfg.get("evaluate", {}), cfg.get("sample", {})
    counts = train_counts(run)
    hist = (run.get("train_summary") or {}).get("history") or []
    items = []
    items.append(("data", (run.get("source") or describe_source(data, run.get("ingest")))["text"]))
    if data.get("protocol"):
        items.append(("imbalance protocol", f"{data['protocol']} (ρ = {data.get('protocol_rho')}, "
                      f"μ = {data.get('protocol_mu')}), imposed on {'train and val only' if data.get('protocol_scope') == 'train' else 'the whole source'}"))
    if counts:
        vals = [v for v in counts.values() if v > 0]
        items.append(("training rows", f"{sum(vals)} in {len(vals)} classes, {per_class_range(vals)}, "
                      f"ρ = {max(vals) / min(vals):.0f}"))
    if hist and hist[-1].get("val_n") is not None:
        items.append(("validation rows", str(hist[-1]["val_n"])))
    sup = [r["support"] for r in metrics["per_class"] if r["support"] > 0]
    items.append(("test rows", f"{metrics['n_rows']}, {per_class_range(sup)}"
                  + (" (balanced)" if min(sup) == max(sup) else "")))
    model = cfg.get("model", {})
    items.append(("model", model.get("name", "?") + (f"-{model.get('depth')}" if model.get("name") == "resnet" else "")))
    items.append(("loss", f"{tr.get('loss')} {tr.get('loss_params') or ''}".strip()))
    items.append(("method", f"{tr.get('method')} {tr.get('method_params') or ''}".strip()))
    items.append(("sampling", f"{sm.get('strategy')}" + (f" cap {sm['cap']}" if sm.get("cap") else "")
                  + (f"; read-time {tr['read_sampling']}" if tr.get("read_sampling") else "")))
    items.append(("threshold rule", THRESHOLD_RULES.get(ev.get("threshold_moving"), ("none",))[0]))
    ts = run.get("train_summary") or {}
    items.append(("epochs", f"{tr.get('epochs')} configured, {ts.get('epochs_run', '?')} run, best epoch "
                  f"{ts.get('best_epoch', '?')} by val {tr.get('select_metric')}"))
    if timings:
        items.append(("wall time per stage", ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())))
    md = ["", "## What ran", "", "| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in items]
    e = html.escape
    frag = "<h2>What ran</h2><table>" + "".join(f"<tr><td>{e(k)}</td><td style='text-align:left'>{e(v)}</td></tr>"
                                                 for k, v in items) + "</table>"
    return Section(md, frag)


def plot_training(history: list, path: Path, save, plt) -> Optional[bytes]:
    """Train loss, val macro-F1 and val balanced accuracy per epoch; per-class val recall heat map."""
    if not history:
        return None
    # deferred: matplotlib is slow to import, and only the report draws
    from matplotlib.ticker import MaxNLocator

    ep = [h["epoch"] for h in history]     # train_summary.json counts epochs from 1
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4), gridspec_kw={"width_ratios": [1, 1, 1.6]})
    for ax in (a1, a2, a3):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    a1.plot(ep, [h.get("train_loss") for h in history], "o-")
    a1.set_xlabel("epoch")
    a1.set_ylabel("train loss")
    a1.set_title("Training loss")
    a1.grid(True, alpha=0.3)
    for k, lab in (("val_macro_f1", "val macro F1"), ("val_balanced_accuracy", "val balanced accuracy")):
        if any(h.get(k) is not None for h in history):
            a2.plot(ep, [h.get(k) for h in history], "o-", label=lab)
    a2.set_ylim(0, 1)
    a2.set_xlabel("epoch")
    a2.set_title("Validation metrics")
    a2.grid(True, alpha=0.3)
    if a2.get_legend_handles_labels()[0]:
        a2.legend(fontsize=8)
    rec = [h.get("val_recall") for h in history]
    if all(r is not None for r in rec):
        m = np.array([[np.nan if v is None else v for v in r] for r in rec], float).T
        cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
        im = a3.imshow(np.ma.masked_invalid(m), aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest",
                       extent=(ep[0] - 0.5, ep[-1] + 0.5, m.shape[0] - 0.5, -0.5))
        a3.set_xlabel("epoch")
        a3.set_ylabel("class index")
        a3.set_title("Per-class validation recall over epochs")
        fig.colorbar(im, ax=a3, label="recall")
    else:
        a3.axis("off")
    return save(fig, path)


def confusions(metrics: dict, top: int = 10) -> list[tuple[int, int, int, float]]:
    """The largest off-diagonal cells: (true, predicted, rows, share of the true class)."""
    cm = np.asarray(metrics["confusion_matrix"], float)
    sup = cm.sum(axis=1)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    idx = np.dstack(np.unravel_index(np.argsort(-off, axis=None, kind="stable"), off.shape))[0][:top]
    return [(int(t), int(p), int(cm[t, p]), float(cm[t, p] / sup[t])) for t, p in idx if cm[t, p] > 0]


def errors_section(metrics: dict, names: dict) -> Section:
    present = [r for r in metrics["per_class"] if r["support"] > 0]
    zero = [r["label"] for r in present if r["f1"] == 0]
    low = [r["label"] for r in present if r["support"] < LOW_SUPPORT]
    conf = confusions(metrics)
    md = ["", "## Where it fails", "", f"Classes at F1 = 0: **{len(zero)} of {len(present)}**.", ""]
    if low:
        md += [f"**Warning:** {len(low)} classes have fewer than {LOW_SUPPORT} test rows; their per-class numbers "
               "have wide intervals (marked ⚠ in the table).", ""]
    md += ["Top confusions (true → predicted, share of the true class's test rows):", "",
           "| true | predicted | rows | share |", "| --- | --- | --- | --- |"]
    md += [f"| {names[t]} | {names[p]} | {n} | {s:.1%} |" for t, p, n, s in conf]
    e = html.escape
    frag = (f"<h2>Where it fails</h2><p>Classes at F1 = 0: <b>{len(zero)} of {len(present)}</b>.</p>"
            + (f"<p class='warn'>⚠ {len(low)} classes have fewer than {LOW_SUPPORT} test rows; their per-class "
               "numbers have wide intervals (marked ⚠ in the table).</p>" if low else "")
            + "<p>Top confusions (true → predicted, share of the true class's test rows):</p><table><tr><th>true</th>"
            "<th>predicted</th><th>rows</th><th>share</th></tr>"
            + "".join(f"<tr><td>{e(names[t])}</td><td>{e(names[p])}</td><td>{n}</td><td>{s:.1%}</td></tr>"
                      for t, p, n, s in conf) + "</table>")
    return Section(md, frag)


def threshold_section(metrics: dict, rule: Optional[str]) -> Optional[Section]:
    if "adjusted" not in metrics:
        return None
    name, how = THRESHOLD_RULES.get(rule or "", (rule or "threshold moving", ""))
    adj = {r["label"]: r for r in metrics["adjusted"]["per_class"]}
    present = [r for r in metrics["per_class"] if r["support"] > 0]
    up = sum(1 for r in present if (adj[r["label"]]["recall"] or 0) > (r["recall"] or 0))
    down = sum(1 for r in present if (adj[r["label"]]["recall"] or 0) < (r["recall"] or 0))
    f_up = sum(1 for r in present if (adj[r["label"]]["f1"] or 0) > (r["f1"] or 0))
    f_down = sum(1 for r in present if (adj[r["label"]]["f1"] or 0) < (r["f1"] or 0))
    text = (f"Rule: {name} — {how} Effect per class: recall rose for {up} classes and fell for {down}; "
            f"F1 rose for {f_up} and fell for {f_down} (columns 'recall (adj.)' and 'F1 (adj.)' in the table). "
            f"Macro F1 {_f(metrics['macro']['f1'])} → {_f(metrics['adjusted']['macro']['f1'])}, balanced accuracy "
            f"{_f(metrics['balanced_accuracy'])} → {_f(metrics['adjusted']['balanced_accuracy'])}.")
    return Section(["", "## Threshold moving", "", text], f"<h2>Threshold moving</h2><p>{html.escape(text)}</p>")


def plot_deltas(rows: list[dict], path: Path, save, plt) -> bytes:
    """Per-class F1 delta (method − reference) with its 95% interval, classes sorted by delta."""
    rs = sorted(rows, key=lambda r: (r["f1_delta"] if r["f1_delta"] is not None else 0, r["label"]))
    x = np.arange(len(rs))
    d = np.array([r["f1_delta"] or 0 for r in rs])
    lo = np.array([r["f1_delta_ci"][0] if r["f1_delta_ci"][0] is not None else 0 for r in rs])
    hi = np.array([r["f1_delta_ci"][1] if r["f1_delta_ci"][1] is not None else 0 for r in rs])
    colors = ["tab:green" if r["verdict"] == "gained" else "tab:red" if r["verdict"] == "lost" else "tab:gray"
              for r in rs]
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.vlines(x, lo, hi, colors=colors, lw=1.2, alpha=0.7)
    ax.scatter(x, d, c=colors, s=14, zorder=3)
    ax.axhline(0, color="black", lw=0.8)
    top, bottom = max(hi.max(initial=0.0), 0.0), min(lo.min(initial=0.0), 0.0)
    pad = 0.05 * max(top - bottom, 0.1)
    ax.set_ylim(max(bottom - pad, -1.02), min(top + pad, 1.02))     # the data's range, 0 always shown
    ax.set_xticks([])
    ax.set_xlabel(f"{len(rs)} classes, sorted by F1 delta (green: gained, red: lost, grey: interval contains 0)")
    ax.set_ylabel("F1 (method) − F1 (reference)")
    ax.set_title("Per-class F1 change with 95% paired-bootstrap intervals")
    ax.grid(True, axis="y", alpha=0.3)
    return save(fig, path)


def comparison_section(comp: dict, names: dict, figs: Path, save, plt) -> Section:
    """Method vs each reference: summary with intervals, gained/lost classes, sortable per-class table."""
    e = html.escape
    md, parts, figures = [], [], []
    method = comp["method"]
    for ref, c in comp["references"].items():
        title = f"{method} vs {ref}"
        m, r, dl = c["method"], c["reference"], c["delta"]
        rows = [("macro F1", f"{_f(m['macro_f1'])} {_ci(m['macro_f1_ci'])}{_sd(m, 'macro_f1')}",
                 f"{_f(r['macro_f1'])} {_ci(r['macro_f1_ci'])}{_sd(r, 'macro_f1')}",
                 f"{_signed(dl['macro_f1'])} {_ci(dl['macro_f1_ci'])}"),
                ("balanced accuracy", f"{_f(m['balanced_accuracy'])} {_ci(m['balanced_accuracy_ci'])}"
                 f"{_sd(m, 'balanced_accuracy')}",
                 f"{_f(r['balanced_accuracy'])} {_ci(r['balanced_accuracy_ci'])}{_sd(r, 'balanced_accuracy')}",
                 f"{_signed(dl['balanced_accuracy'])} {_ci(dl['balanced_accuracy_ci'])}"),
                ("accuracy", _f(m["accuracy"]) + _sd(m, "accuracy"), _f(r["accuracy"]) + _sd(r, "accuracy"),
                 _signed(m["accuracy"] - r["accuracy"])),
                (f"F1 of the 5 largest classes (L5, by {m.get('groups_by', 'test support')})",
                 _f(m["l5_f1"]) + _sd(m, "l5_f1"), _f(r["l5_f1"]) + _sd(r, "l5_f1"), _signed(dl["l5_f1"])),
                ("F1 of the other classes (Rest)", _f(m["rest_f1"]) + _sd(m, "rest_f1"),
                 _f(r["rest_f1"]) + _sd(r, "rest_f1"), _signed(dl["rest_f1"])),
                ("classes at F1 = 0" + (" in every seed" if c.get("seeds", {}).get("method", 1) > 1 else ""),
                 str(m["f1_zero_classes"]), str(r["f1_zero_classes"]),
                 f"{m['f1_zero_classes'] - r['f1_zero_classes']:+d}")]
        gained = ", ".join(names[i] for i in c["gained"]) or "none"
        lost = ", ".join(names[i] for i in c["lost"]) or "none"
        seeds = c.get("seeds", {}).get("method", 1)
        values = (f"Each value is the mean over {seeds} training seeds, with the seed-to-seed standard deviation "
                  "(sd). " if seeds > 1 else "")
        note = (values + f"Both models were trained on the same split and training set and scored on the same "
                f"{c['n_rows']} test rows (raw argmax decisions). Intervals: 95%, {interval_basis(c)} "
                f"({c['replicates']} replicates, seed {c['seed']}); L5 = the 5 largest "
                f"classes by {m.get('groups_by', 'test support')}, ties by class index. A class gained (lost) when its F1-delta interval lies "
                "above (below) 0.")
        md += ["", f"## {title}", "", note, "", f"| metric | {method} | {ref} | difference |", "| --- | --- | --- | --- |"]
        md += [f"| {a} | {b} | {cc} | {d} |" for a, b, cc, d in rows]
        md += ["", f"Classes gained ({len(c['gained'])}): {gained}", "", f"Classes lost ({len(c['lost'])}): {lost}", "",
               f"| class | training rows | test rows | F1 {method} | F1 {ref} | ΔF1 [95% CI] | Δrecall [95% CI] | verdict |",
               "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for x in c["per_class"]:
            md.append(f"| {names[x['label']]} | {_n(x.get('train_rows'))} | {x['support']} | {_f(x['f1'])} | {_f(x['f1_ref'])} | "
                      f"{_signed(x['f1_delta'])} {_ci(x['f1_delta_ci'])} | {_signed(x['recall_delta'])} "
                      f"{_ci(x['recall_delta_ci'])} | {x['verdict']} |")
        fname = f"delta_{ref}.png"
        png = plot_deltas(c["per_class"], figs / fname, save, plt)
        cap = "Each bar is a class's 95% interval of F1(method) − F1(reference); classes unlabeled, sorted by the delta."
        figures.append(Figure(f"Per-class F1 change: {title}", fname, png, cap))
        md += ["", f"![{title}](figures/{fname})", "", cap]
        b64 = base64.b64encode(png).decode("ascii")
        parts.append(f"<h2 id='compare-{e(ref)}'>{e(title)}</h2><p class='cap'>{e(note)}</p><table><tr><th>metric</th>"
                     f"<th>{e(method)}</th><th>{e(ref)}</th><th>difference</th></tr>"
                     + "".join(f"<tr><td>{e(a)}</td><td>{e(b)}</td><td>{e(cc)}</td><td>{e(d)}</td></tr>"
                               for a, b, cc, d in rows) + "</table>"
                     f"<p><b>Classes gained ({len(c['gained'])}):</b> {e(gained)}<br><b>Classes lost "
                     f"({len(c['lost'])}):</b> {e(lost)}</p>"
                     f"<img alt='{e(title)}' src='data:image/png;base64,{b64}'><p class='cap'>{e(cap)}</p>")
        head = ["class", "training rows", "test rows", f"F1 {method}", f"F1 {ref}", "ΔF1", "ΔF1 95% CI", "Δrecall", "Δrecall 95% CI",
                "verdict"]
        body = []
        for x in c["per_class"]:
            cells = [Cell(names[x["label"]], x["label"]), Cell(_n(x.get("train_rows")), x.get("train_rows")),
                     Cell(str(x["support"]), x["support"]), Cell(_f(x["f1"]), x["f1"]),
                     Cell(_f(x["f1_ref"]), x["f1_ref"]), Cell(_signed(x["f1_delta"]), x["f1_delta"]),
                     Cell(_ci(x["f1_delta_ci"]), x["f1_delta_ci"][0]),
                     Cell(_signed(x["recall_delta"]), x["recall_delta"]),
                     Cell(_ci(x["recall_delta_ci"]), x["recall_delta_ci"][0]), Cell(x["verdict"], x["verdict"])]
            body.append(cells)
        parts.append(sortable_table(head, body, table_id=f"cmp-{ref}",
                                    keys=["class", "train_rows", "support", "f1", "f1_ref", "df1", "df1_lo", "drecall",
                                          "drecall_lo", "verdict"]))
    return Section(md, "".join(parts), figures)


def sortable_table(head: list[str], rows: list[list[Cell]], table_id: str, keys: list[str],
                   row_class: Optional[list[str]] = None) -> str:
    """An HTML table whose columns sort on a click (see SORT_SCRIPT), one :class:`Cell` per value."""
    e = html.escape
    out = [f"<div class='scroll'><table class='sortable' id='{e(table_id)}'><thead><tr>"]
    out += [f"<th data-key='{e(k)}' title='click to sort'>{e(h)}</th>" for h, k in zip(head, keys)]
    out.append("</tr></thead><tbody>")
    for i, r in enumerate(rows):
        cls = f" class='{row_class[i]}'" if row_class and row_class[i] else ""
        cells = []
        for cell in r:
            val = cell.sort
            v = "" if val is None else (f"{val:.6g}" if isinstance(val, float) else str(val))
            cells.append(f"<td data-v='{e(v)}'>{e(cell.text)}</td>")
        out.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


# Plain script: click a header to sort its table (again to reverse); #sort=KEY (or #sort=-KEY for
# descending) sorts the per-class table by that column on load; marks <body data-images-loaded> once
# every <img> has decoded, for headless checks.
SORT_SCRIPT = """<script>
function sortBy(th, desc){var t=th.closest('table'),i=Array.prototype.indexOf.call(th.parentNode.children,th),
b=t.tBodies[0],rs=Array.from(b.rows);if(desc===undefined){desc=th.dataset.dir==='asc';}
th.dataset.dir=desc?'desc':'asc';rs.sort(function(a,c){var x=a.cells[i].dataset.v,y=c.cells[i].dataset.v,
nx=parseFloat(x),ny=parseFloat(y),r;if(x===''&&y!=='')return 1;if(y===''&&x!=='')return -1;
r=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);return desc?-r:r;});rs.forEach(function(r){b.appendChild(r);});
document.body.dataset.sorted=th.dataset.key+(desc?':desc':':asc');}
document.querySelectorAll('table.sortable th').forEach(function(th){th.style.cursor='pointer';
th.addEventListener('click',function(){sortBy(th);});});
var m=location.hash.match(/sort=(-?)([\\w]+)/);if(m){var th=document.querySelector("#per-class th[data-key='"+m[2]+"']");
if(th)sortBy(th,m[1]==='-');}
function imgs(){var a=Array.from(document.images);if(a.every(function(i){return i.complete&&i.naturalWidth>0;}))
{document.body.dataset.imagesLoaded=a.length;}else{setTimeout(imgs,50);}}
window.addEventListener('load',imgs);
</script>"""
