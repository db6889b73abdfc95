"""The HTML report of ``imbalance recommend``: which class-imbalance method to use on this data, and why.

``imbalance recommend`` searches the methods by successive halving on the validation split, then
retrains the finalists (and the baseline) with several seeds and compares them with a two-level
bootstrap (seeds drawn with replacement, then each seed's validation rows). This module only renders
what the orchestrator measured, into one self-contained HTML file (inline CSS and hand-drawn SVG; no
script, no external file, no network):

1. **Headline** — the recommended method, whether the recommendation is confident, the
   orchestrator's one-sentence message, the gain over the baseline with its 95% interval, and the
   statement that models were compared on the validation split only (the test split is never read).
2. **Leaderboard** — the finalists sorted by score: overrides, score, 95% interval, p_best (the share
   of bootstrap replicates in which the candidate scores highest) and the fidelity it was measured at
   (epochs × seeds); the baseline and the recommended method are marked.
3. **p_best bars** — one horizontal bar per finalist, its length proportional to p_best.
4. **Halving rounds** — the validation metric against the epoch for every search trial: trials the
   scheduler stopped in thin grey, trials that ran to the end in colour with a legend, the rungs as
   dashed vertical lines; a table lists every trial's status, epochs and best value.
5. **Time and budget** — the epochs used against the budget asked for and a full grid, and the
   seconds of each phase.

Every value that comes from the user (names, overrides, messages, metric names) is HTML-escaped.
Missing optional keys print as "—"; NaN or None values in a trial's history are skipped.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Optional

from pipeline.io import local_path, write_text

#: the stroke of a trial the scheduler stopped early (thin, behind the others)
STOPPED_COLOUR = "#b0b0b0"
#: the strokes of the trials that ran to the last epoch, in turn (matplotlib's tab10)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
BAR_COLOUR = "#4c72b0"

_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}"
        "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
        "th{background:#f0f0f0}td:first-child,th:first-child,th.ov{text-align:left}"
        "td.ov{text-align:left;font-family:monospace;font-size:12px}"
        "tr.best td{background:#e8f4e8}tr.baseline td{background:#f4f4f4}"
        ".tag{font-size:11px;border-radius:3px;padding:0 4px;margin-left:4px;color:#fff}"
        ".tag.best{background:#2a7a2a}.tag.baseline{background:#777}.cap{color:#555;font-size:13px}"
        ".headline{font-size:1.15em}.warn{color:#a05000}.ok{color:#2a7a2a}svg{font-size:11px}")


def _e(x: Any) -> str:
    return html.escape(str(x))


def _num(v: Any) -> Optional[float]:
    """``v`` as a finite float, or None (None, NaN, ±inf, a bool or anything not a number)."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _f(v: Any, d: int = 3, signed: bool = False) -> str:
    x = _num(v)
    if x is None:
        return "—"
    text = f"{x:+.{d}f}" if signed else f"{x:.{d}f}"
    return f"{0:.{d}f}" if float(text) == 0 else text     # never "-0.000"


def _ci(ci: Any, d: int = 3, signed: bool = False) -> str:
    if not isinstance(ci, (list, tuple)) or len(ci) != 2 or _num(ci[0]) is None or _num(ci[1]) is None:
        return "—"
    return f"[{_f(ci[0], d, signed)}, {_f(ci[1], d, signed)}]"


def _pct(p: Any) -> str:
    x = _num(p)
    return "—" if x is None else f"{100 * x:.1f}%"


def _duration(s: Any) -> str:
    x = _num(s)
    if x is None:
        return "—"
    if x < 60:
        return f"{x:.1f} s"
    if x < 3600:
        return f"{int(x // 60)} min {int(round(x % 60)):02d} s"
    return f"{int(x // 3600)} h {int(round(x % 3600 / 60)):02d} min"


def overrides_text(overrides: Any) -> str:
    """``key=value`` pairs of a candidate's config overrides, compact (values as JSON); not escaped."""
    if not overrides:
        return "(base config)"
    if not isinstance(overrides, dict):
        return str(overrides)

    def value(v: Any) -> str:
        if isinstance(v, str):
            return v
        try:
            return json.dumps(v, separators=(",", ":"), sort_keys=True, default=str)
        except (TypeError, ValueError):
            return str(v)
    return ", ".join(f"{k}={value(v)}" for k, v in overrides.items())


def _short(name: str, n: int = 26) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def _sorted_candidates(rec: dict) -> list[dict]:
    """The finalists, best score first (a candidate without a score last)."""
    cands = [c for c in (rec.get("candidates") or []) if isinstance(c, dict)]
    return sorted(cands, key=lambda c: (_num(c.get("score")) is None, -(_num(c.get("score")) or 0.0)))


def _split_sentence(rec: dict) -> str:
    split = str(rec.get("split") or "val")
    if split == "test":
        return "Models were compared on the test split, so these numbers are not an independent estimate."
    label = "validation" if split in ("val", "validation") else split
    return f"Models are compared on the {label} split only; the test split was never read."


def _headline(rec: dict) -> str:
    """Section 1: the recommended method, its confidence, the message, the gain and the split used."""
    best = rec.get("best") or {}
    base = rec.get("baseline") or {}
    gain = rec.get("gain") or {}
    metric = rec.get("metric") or "metric"
    confident = rec.get("confident")
    conf = ("<span class='ok'>confident</span>: it beats the baseline with 95% confidence" if confident is True
            else "<span class='warn'>not confident</span>: no significant gain over the baseline at 95%"
            if confident is False else "confidence unknown")
    parts = [f"<h1>Recommendation</h1><p class='headline'>Recommended method: <b>{_e(best.get('name', '—'))}</b>"
             f" ({conf}).</p>"]
    top = rec.get("highest_scoring")
    if top and top != best.get("name"):
        parts.append(f"<p>Highest scoring finalist: {_e(top)} (not recommended: its gain is not significant).</p>")
    if best.get("overrides") is not None:
        parts.append(f"<p>Overrides: <code>{_e(overrides_text(best.get('overrides')))}</code></p>")
    if rec.get("message"):
        parts.append(f"<p><b>{_e(rec['message'])}</b></p>")
    parts.append(f"<p>Gain over the baseline ({_e(base.get('name', 'baseline'))}, {_e(metric)} "
                 f"{_f(base.get('score'))}): {_f(gain.get('mean'), signed=True)}, 95% interval "
                 f"{_ci(gain.get('ci'), signed=True)}.</p>")
    parts.append(f"<p class='split'><b>{_e(_split_sentence(rec))}</b></p>")
    return "\n".join(parts)


def _fidelity(c: dict) -> str:
    fid = c.get("fidelity") or {}
    ep, sd = fid.get("epochs"), fid.get("seeds")
    if ep is None and sd is None:
        return "—"
    return f"{'—' if ep is None else ep} epochs × {'—' if sd is None else sd} seeds"


def _leaderboard(rec: dict) -> str:
    """Section 2: the finalists' table, sorted by score, the baseline and the best marked."""
    best = (rec.get("best") or {}).get("name")
    base = (rec.get("baseline") or {}).get("name", "baseline")
    metric = rec.get("metric") or "metric"
    rows = []
    for c in _sorted_candidates(rec):
        name = str(c.get("name", "—"))
        tags, cls = "", []
        if name == best:
            tags, cls = tags + "<span class='tag best'>recommended</span>", cls + ["best"]
        if name == base:
            tags, cls = tags + "<span class='tag baseline'>baseline</span>", cls + ["baseline"]
        rows.append(f"<tr class='{' '.join(cls)}'><td>{_e(name)}{tags}</td>"
                    f"<td class='ov'>{_e(overrides_text(c.get('overrides')))}</td><td>{_f(c.get('score'))}</td>"
                    f"<td>{_ci(c.get('ci'))}</td><td>{_pct(c.get('p_best'))}</td><td>{_fidelity(c)}</td></tr>")
    if not rows:
        return "<h2>Leaderboard</h2><p class='warn'>No finalists were compared.</p>"
    return (f"<h2>Leaderboard</h2><p class='cap'>score: the mean {_e(metric)} on the {_e(rec.get('split') or 'val')}"
            " split over the training seeds; 95% interval: two-level bootstrap (seeds drawn with replacement, then "
            "each seed's validation rows); p_best: the share of bootstrap replicates in which the candidate scores "
            "highest; fidelity: the epochs and seeds each finalist was retrained with.</p>"
            "<table class='leaderboard'><thead><tr><th>candidate</th><th class='ov'>overrides</th><th>score</th>"
            "<th>95% interval</th><th>p_best</th><th>fidelity</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _pbest_bars(rec: dict) -> str:
    """Section 3: a horizontal SVG bar per finalist, width proportional to p_best."""
    cands = _sorted_candidates(rec)
    if not cands:
        return ""
    label_w, bar_w, row_h, pad = 190, 420, 24, 6
    width, height = label_w + bar_w + 70, pad * 2 + row_h * len(cands)
    best = (rec.get("best") or {}).get("name")
    parts = [f"<h2>Probability of being best</h2><svg class='pbest' xmlns='http://www.w3.org/2000/svg' "
             f"width='{width}' height='{height}' viewBox='0 0 {width} {height}' role='img'>"]
    for i, c in enumerate(cands):
        name = str(c.get("name", "—"))
        p = min(max(_num(c.get("p_best")) or 0.0, 0.0), 1.0)
        y = pad + i * row_h
        w = p * bar_w
        parts.append(f"<text x='{label_w - 6}' y='{y + row_h / 2 + 4:.1f}' text-anchor='end'>"
                     f"<title>{_e(name)}</title>{_e(_short(name))}</text>")
        parts.append(f"<rect class='pbest-bar' x='{label_w}' y='{y + 3}' width='{w:.1f}' height='{row_h - 6}' "
                     f"fill='{'#2a7a2a' if name == best else BAR_COLOUR}'/>")
        parts.append(f"<text class='pct' x='{label_w + w + 5:.1f}' y='{y + row_h / 2 + 4:.1f}'>"
                     f"{_pct(c.get('p_best'))}</text>")
    parts.append(f"<line x1='{label_w}' y1='{pad}' x2='{label_w}' y2='{height - pad}' stroke='#444'/></svg>")
    parts.append("<p class='cap'>p_best: the share of the bootstrap replicates in which each finalist has the "
                 "highest score (the shares sum to 100%).</p>")
    return "\n".join(parts)


def trial_points(trial: dict) -> list[tuple[float, float]]:
    """A trial's ``(epoch, value)`` points, in epoch order, without those whose epoch or value is
    missing, NaN or not a number."""
    pts = []
    for h in trial.get("history") or []:
        if not isinstance(h, dict):
            continue
        x, y = _num(h.get("epoch")), _num(h.get("value"))
        if x is not None and y is not None:
            pts.append((x, y))
    return sorted(pts)


def is_stopped(trial: dict) -> bool:
    """Whether the scheduler stopped the trial before the last epoch."""
    return bool(trial.get("stopped")) or trial.get("status") == "STOPPED"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def _epoch_ticks(hi: int) -> list[int]:
    step = max(1, math.ceil(hi / 10))
    return list(range(0, hi + 1, step))


def _scales(search: dict, trials: list[dict], box: tuple) -> tuple:
    """The chart's x and y maps (data → pixels) and the data ranges they cover."""
    left, top, right, bottom = box
    pts = [p for t in trials for p in trial_points(t)]
    x_hi = max([int(_num(search.get("max_epochs")) or 1)] + [int(math.ceil(x)) for x, _ in pts]
               + [int(_num(r) or 0) for r in (search.get("rungs") or [])])
    ys = [y for _, y in pts] or [0.0, 1.0]
    y_lo, y_hi = min(ys), max(ys)
    span = (y_hi - y_lo) or max(abs(y_hi) * 0.1, 0.05)
    y_lo, y_hi = y_lo - 0.05 * span, y_hi + 0.05 * span

    def sx(x: float) -> float:
        return left + (right - left) * x / max(x_hi, 1)

    def sy(y: float) -> float:
        return bottom - (bottom - top) * (y - y_lo) / (y_hi - y_lo)
    return sx, sy, x_hi, (y_lo, y_hi)


def _axes(sx, sy, x_hi: int, y_range: tuple, box: tuple, *, x_label: str, y_label: str) -> list[str]:
    """The frame, ticks and axis labels of the halving chart."""
    left, top, right, bottom = box
    out = [f"<rect x='{left}' y='{top}' width='{right - left}' height='{bottom - top}' fill='none' stroke='#444'/>"]
    for x in _epoch_ticks(x_hi):
        px = sx(x)
        out.append(f"<line x1='{px:.1f}' y1='{bottom}' x2='{px:.1f}' y2='{bottom + 4}' stroke='#444'/>"
                   f"<text x='{px:.1f}' y='{bottom + 16}' text-anchor='middle'>{x}</text>")
    for y in _ticks(*y_range):
        py = sy(y)
        out.append(f"<line x1='{left - 4}' y1='{py:.1f}' x2='{right}' y2='{py:.1f}' stroke='#eee'/>"
                   f"<text x='{left - 6}' y='{py + 4:.1f}' text-anchor='end'>{_f(y)}</text>")
    out.append(f"<text x='{(left + right) / 2:.1f}' y='{bottom + 34}' text-anchor='middle'>{_e(x_label)}</text>")
    out.append(f"<text x='14' y='{(top + bottom) / 2:.1f}' text-anchor='middle' "
               f"transform='rotate(-90 14 {(top + bottom) / 2:.1f})'>{_e(y_label)}</text>")
    return out


def _rung_lines(search: dict, sx, box: tuple) -> list[str]:
    _, top, right, bottom = box
    out = []
    for r in search.get("rungs") or []:
        x = _num(r)
        if x is None:
            continue
        px = sx(x)
        at_edge = px > right - 50          # label inside the plot, clear of the legend
        anchor = "end" if at_edge else "start"
        label = (f"<text x='{px - 3 if at_edge else px + 3:.1f}' y='{top + 11}' fill='#666' "
                 f"text-anchor='{anchor}'>rung {_e(r)}</text>")
        out.append(f"<line class='rung' x1='{px:.1f}' y1='{top}' x2='{px:.1f}' y2='{bottom}' stroke='#666' "
                   f"stroke-dasharray='5,4'/>{label}")
    return out


def _trial_lines(trials: list[dict], sx, sy) -> tuple[list[str], list[tuple[str, str, str]]]:
    """One polyline per trial with at least one value (stopped ones first, so the others lie on top),
    and the legend entries ``(name, colour, dash)`` of the trials that were not stopped."""
    lines, legend, k = [], [], 0
    order = sorted(range(len(trials)), key=lambda i: not is_stopped(trials[i]))
    for i in order:
        t = trials[i]
        pts = trial_points(t)
        if not pts:
            continue
        name = str(t.get("name", f"trial {i}"))
        if is_stopped(t):
            colour, width, dash, cls = STOPPED_COLOUR, 1, "", "trial stopped"
        else:
            colour, width, cls = PALETTE[k % len(PALETTE)], 2, "trial finished"
            dash = " stroke-dasharray='2,2'" if t.get("status") == "ERROR" else ""
            legend.append((name, colour, dash))
            k += 1
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        lines.append(f"<polyline class='{cls}' points='{coords}' fill='none' stroke='{colour}' "
                     f"stroke-width='{width}'{dash}><title>{_e(name)}</title></polyline>")
        if len(pts) == 1:        # a single point draws no line: mark it
            lines.append(f"<circle cx='{sx(pts[0][0]):.1f}' cy='{sy(pts[0][1]):.1f}' r='2.5' fill='{colour}'/>")
    return lines, legend


def _legend(legend: list[tuple[str, str, str]], x: float, top: float, n_stopped: int) -> list[str]:
    out = []
    for j, (name, colour, dash) in enumerate(legend):
        y = top + 8 + 16 * j
        out.append(f"<line x1='{x}' y1='{y}' x2='{x + 22}' y2='{y}' stroke='{colour}' stroke-width='2'{dash}/>"
                   f"<text class='legend' x='{x + 28}' y='{y + 4}'><title>{_e(name)}</title>{_e(_short(name))}</text>")
    if n_stopped:
        y = top + 8 + 16 * len(legend)
        out.append(f"<line x1='{x}' y1='{y}' x2='{x + 22}' y2='{y}' stroke='{STOPPED_COLOUR}' stroke-width='1'/>"
                   f"<text x='{x + 28}' y='{y + 4}'>stopped ({n_stopped})</text>")
    return out


def _halving_svg(search: dict, trials: list[dict]) -> str:
    """The SVG line chart of the validation metric against the epoch for every search trial."""
    width, height = 900, 380
    box = (64, 16, 660, height - 48)       # left, top, right, bottom of the plot area
    sx, sy, x_hi, y_range = _scales(search, trials, box)
    lines, legend = _trial_lines(trials, sx, sy)
    n_stopped = sum(1 for t in trials if is_stopped(t) and trial_points(t))
    parts = [f"<svg class='halving' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
             f"viewBox='0 0 {width} {height}' role='img'>"]
    parts += _axes(sx, sy, x_hi, y_range, box, x_label="epoch", y_label=search.get("metric") or "validation metric")
    parts += _rung_lines(search, sx, box)
    parts += lines
    parts += _legend(legend, box[2] + 16, box[1], n_stopped)
    parts.append("</svg>")
    return "\n".join(parts)


def _trial_table(trials: list[dict]) -> str:
    rows = []
    for i, t in enumerate(trials):
        pts = trial_points(t)
        best = max((y for _, y in pts), default=None)
        last = pts[-1][1] if pts else None
        status = str(t.get("status") or ("STOPPED" if is_stopped(t) else "—"))
        if t.get("error"):
            status += f": {t['error']}"
        rows.append(f"<tr><td>{_e(t.get('name', f'trial {i}'))}</td><td class='ov'>"
                    f"{_e(overrides_text(t.get('overrides')))}</td><td>{_e(status)}</td>"
                    f"<td>{_e(t.get('epochs', len(pts)))}</td><td>{_f(last)}</td><td>{_f(best)}</td></tr>")
    return ("<table class='trials'><thead><tr><th>trial</th><th class='ov'>overrides</th><th>status</th><th>epochs</th>"
            "<th>last value</th><th>best value</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _halving_section(search: dict) -> str:
    """Section 4: the halving rounds — chart, how the search was set up, and the trial table."""
    trials = [t for t in (search.get("trials") or []) if isinstance(t, dict)]
    parts = ["<h2>Halving rounds</h2>"]
    rungs = ", ".join(_e(r) for r in (search.get("rungs") or [])) or "—"
    parts.append(f"<p class='cap'>Successive halving on the validation split: every candidate trains at least "
                 f"{_e(search.get('grace_epochs', '—'))} epochs; at each rung (epochs {rungs}) about one in "
                 f"{_e(search.get('reduction_factor', '—'))} candidates goes on, up to "
                 f"{_e(search.get('max_epochs', '—'))} epochs. Grey, thin: trials stopped at a rung; in colour: "
                 "trials that ran to the end (dotted: ended with an error); dashed vertical lines: the rungs.</p>")
    if not trials:
        return "\n".join(parts + ["<p class='warn'>The search ran no trials.</p>"])
    empty = [str(t.get("name", "?")) for t in trials if not trial_points(t)]
    if len(empty) < len(trials):
        parts.append(_halving_svg(search, trials))
    if empty:
        parts.append(f"<p class='warn'>No validation values recorded for: {_e(', '.join(empty))}.</p>")
    parts.append(_trial_table(trials))
    return "\n".join(parts)


def _budget_section(rec: dict) -> str:
    """Section 5: epochs used against the budget asked for and a full grid; seconds per phase."""
    budget = rec.get("budget") or {}
    unit = str(budget.get("unit") or "epochs")
    grid = _num(budget.get("grid"))

    def share(v: Any) -> str:
        x = _num(v)
        return "—" if x is None or not grid else f"{100 * x / grid:.0f}%"

    rows = [("used (search + finalists)", budget.get("used")),
            ("asked for", budget.get("asked")),
            ("a full grid (every candidate at full fidelity)", budget.get("grid")),
            ("search", budget.get("search")), ("finalists", budget.get("finalists"))]
    body = "".join(f"<tr><td>{_e(k)}</td><td>{'no limit' if k == 'asked for' and v is None else _e(_cell(v))}"
                   f"</td><td>{share(v)}</td></tr>" for k, v in rows)
    parts = ["<h2>Time and budget</h2>", f"<table class='budget'><thead><tr><th>budget</th><th>{_e(unit)}</th>"
             f"<th>of a full grid</th></tr></thead><tbody>{body}</tbody></table>"]
    seconds = rec.get("seconds") or {}
    phases = [("search", "search (successive halving)"), ("finalists", "finalists (retrained with seeds)"),
              ("compare", "comparison (bootstrap)"), ("total", "total")]
    body = "".join(f"<tr><td>{_e(label)}</td><td>{_f(seconds.get(k), 1)}</td><td>{_duration(seconds.get(k))}</td>"
                   "</tr>" for k, label in phases)
    parts.append(f"<table class='seconds'><thead><tr><th>phase</th><th>seconds</th><th>wall clock</th></tr></thead>"
                 f"<tbody>{body}</tbody></table>")
    return "\n".join(parts)


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    x = _num(v)
    return str(v) if x is None else (str(int(x)) if x == int(x) else f"{x:.1f}")


def render_recommend_report(recommendation: dict, search: dict) -> str:
    """The report's HTML text (see the module docstring for its sections)."""
    rec, search = recommendation or {}, search or {}
    title = "Recommendation"
    best = (rec.get("best") or {}).get("name")
    head = (f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}"
            f"{': ' + _e(best) if best else ''}</title><style>{_CSS}</style></head><body>")
    body = [_headline(rec), _leaderboard(rec), _pbest_bars(rec), _halving_section(search), _budget_section(rec)]
    return "\n".join([head] + [b for b in body if b] + ["</body></html>"]) + "\n"


def write_recommend_report(recommendation: dict, search: dict, path: Path) -> None:
    """Write the recommendation report to ``path`` (one self-contained HTML file), atomically: a reader
    sees the previous file or the complete new one, never a partial write."""
    out = local_path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = render_recommend_report(recommendation, search)
    # ASCII with character references: the file reads the same whatever the locale's encoding
    write_text(out, text.encode("ascii", "xmlcharrefreplace").decode("ascii"))
