"""Turn an experiment's output directory into a markdown section for ``docs/`` (tables + plots).

    python scripts/repro_report.py EXPERIMENT_DIR docs/repro-NAME.md --title "..." --command "..." \
        [--metrics macro_f1 macro_roc_auc] [--plots macro_f1 macro_roc_auc] [--notes notes.md]

Writes: one table per metric (mean ± std over seeds, per method and level), the mean trial and
training time per method, and per metric the Friedman test over (level, seed) blocks with the
average ranks, Nemenyi's critical difference and the Wilcoxon–Holm pairs that differ at 0.05.
The plots named are copied to ``docs/img/<NAME>/``. ``--notes`` (markdown) is inserted after the
title: the findings, written by a person after reading the tables.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pandas as pd


def _fmt(mean, std, n) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.3f} ± {0.0 if pd.isna(std) else std:.3f}" + ("" if n == 3 else f" (n={n})")


def metric_table(results: pd.DataFrame, metric: str, methods: list, levels: list) -> list[str]:
    g = results.groupby(["method", "level_name"])[metric].agg(["mean", "std", "count"])
    lines = ["| method | " + " | ".join(str(lv) for lv in levels) + " | mean |", "|---" * (len(levels) + 2) + "|"]
    for m in methods:
        cells = []
        for lv in levels:
            if (m, lv) in g.index:
                r = g.loc[(m, lv)]
                cells.append(_fmt(r["mean"], r["std"], int(r["count"])))
            else:
                cells.append("—")
        overall = results.loc[results["method"] == m, metric].mean()
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {overall:.3f} |")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("exp_dir")
    ap.add_argument("out_md")
    ap.add_argument("--title", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--metrics", nargs="+", default=["macro_f1", "macro_roc_auc"])
    ap.add_argument("--plots", nargs="+", default=["macro_f1", "macro_roc_auc"])
    ap.add_argument("--notes")
    a = ap.parse_args(argv)
    exp = Path(a.exp_dir)
    out = Path(a.out_md)
    results = pd.read_csv(exp / "results.csv")
    stats = json.loads((exp / "stats.json").read_text())
    methods = list(dict.fromkeys(results["method"]))
    levels = list(dict.fromkeys(results["level_name"]))          # in the config's order
    seeds = sorted(results["seed"].unique())
    records = json.loads((exp / "trials.json").read_text())
    failed = [r for r in records if "error" in r]

    lines = [f"# {a.title}", "", f"Command: `{a.command}`", "",
             f"{len(results.drop_duplicates('run_dir'))} trials ({len(methods)} methods reported, "
             f"{len(levels)} levels, seeds {', '.join(map(str, seeds))}); "
             f"{len(failed)} failed. Raw results: `results.csv`, statistics: `stats.json` in the experiment "
             f"directory.", ""]
    if a.notes:
        lines += [Path(a.notes).read_text().strip(), ""]
    for metric in a.metrics:
        if metric not in results or results[metric].isna().all():
            continue
        lines += [f"## {metric} (mean ± std over seeds)", ""] + metric_table(results, metric, methods, levels) + [""]
        st = stats["metrics"].get(metric, {})
        fr, nem = st.get("friedman", {}), st.get("nemenyi") or {}
        if fr.get("applicable"):
            ranks = sorted(fr["avg_ranks"].items(), key=lambda kv: kv[1])
            lines.append(f"Friedman over {fr['n_blocks']} (level, seed) blocks: χ² = {fr['statistic']:.2f}, "
                         f"p = {fr['p_value']:.3g}; average ranks (1 = best): "
                         + ", ".join(f"{m} {r:.2f}" for m, r in ranks)
                         + (f"; Nemenyi CD = {nem['cd']:.2f}." if nem.get("cd") else "."))
            sig = [w for w in st.get("wilcoxon_holm", []) if w.get("reject")]
            if sig:
                lines.append("Wilcoxon–Holm pairs that differ at 0.05: "
                             + "; ".join(f"{w['better']} > {w['b'] if w['better'] == w['a'] else w['a']} "
                                         f"(p_holm {w['p_holm']:.3g})" for w in sig) + ".")
            else:
                lines.append("No Wilcoxon–Holm pair differs at 0.05.")
            lines.append("")
    t = results.drop_duplicates("run_dir").groupby("method")[["trial_seconds", "train_seconds"]].mean()
    lines += ["## Time per trial (mean seconds, 2-core machine shared with other jobs)", "",
              "| method | trial | training |", "|---|---|---|"]
    for m in methods:
        if m in t.index:
            lines.append(f"| {m} | {t.loc[m, 'trial_seconds']:.1f} | {t.loc[m, 'train_seconds']:.1f} |")
    lines.append("")
    img = out.parent / "img" / out.stem
    img.mkdir(parents=True, exist_ok=True)
    plots = []
    for p in a.plots:
        for name in (f"{p}_vs_rho.png", f"cd_{p}.png"):
            if (exp / name).is_file():
                shutil.copy(exp / name, img / name)
                plots.append(f"![{name}](img/{out.stem}/{name})")
    if plots:
        lines += ["## Plots", ""] + plots + [""]
    if failed:
        lines += ["## Failed trials", ""] + [f"- {r['trial']}: {r['error']}" for r in failed] + [""]
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
