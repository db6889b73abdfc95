"""The report's calibration section: can the probabilities be read as probabilities?

Reads ``metrics.json["calibration"]`` (:mod:`pipeline.evaluation.calibration`): Brier score and
top-label ECE of the raw, prior-corrected and temperature-scaled probabilities, and a reliability
diagram (accuracy against mean confidence per confidence bin, with the bin counts beneath).
Returns Markdown lines, an HTML fragment and the figure ``(title, file, png, caption)``.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Optional

from pipeline.evaluation.report_sections import Figure, Section

VARIANTS = (("raw", "raw (probs)"), ("prior_corrected", "prior-corrected"),
            ("temperature", "prior-corrected + temperature"))
NOTE = ("Sampling changes the class prior the network learns (RUS to 1:1 makes a rare class look common), so its "
        "raw probabilities describe the sampled data. The prior correction moves them back to the class "
        "distribution of the training split before sampling, p̂_c ∝ p_c · π_c / π′_c (Saerens et al. 2002; "
        "Dal Pozzolo et al. 2015 for binary under-sampling); temperature scaling (Guo et al. 2017) then "
        "fits one scalar on the validation split. Decisions (pred) and, for two classes, the ranking (ROC/PR "
        "AUC) are unchanged. Lower is better for both numbers; ECE: top-label, 15 equal-width bins.")


def plot_reliability(cal: dict, path: Path, save, plt) -> bytes:
    """Accuracy vs confidence per bin for each variant (diagonal = calibrated), bin counts beneath."""
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6.5, 7), gridspec_kw={"height_ratios": [3, 1.3]}, sharex=True)
    a1.plot([0, 1], [0, 1], color="#999", lw=1, ls="--", label="perfectly calibrated")
    shown = [(k, lab) for k, lab in VARIANTS if k in cal]
    width = 1.0 / cal.get("ece_bins", 15) / (len(shown) + 0.5)
    for i, (key, label) in enumerate(shown):
        bins = [b for b in cal[key]["bins"] if b["count"]]
        a1.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", ms=4,
                label=f"{label}: ECE {cal[key]['ece']:.3f}")
        a2.bar([b["lo"] + (i + 0.5) * width for b in cal[key]["bins"]], [b["count"] for b in cal[key]["bins"]],
               width, label=label)
    a1.set_ylabel("accuracy of the predicted class")
    a1.set_ylim(-0.02, 1.02)
    a1.set_title("Reliability diagram (top label)")
    a1.legend(fontsize=8, loc="upper left")
    a1.grid(True, alpha=0.3)
    a2.set_yscale("symlog", linthresh=1)
    a2.set_xlabel("confidence (largest probability), 15 bins")
    a2.set_ylabel("rows in bin")
    a2.set_xlim(0, 1)
    a2.grid(True, axis="y", alpha=0.3)
    return save(fig, path)


def calibration_section(metrics: dict, figs: Path, save, plt) -> Optional[Section]:
    """Markdown lines, HTML and the reliability figure of ``metrics["calibration"]`` (None without it)."""
    cal = metrics.get("calibration")
    if not cal or "raw" not in cal:
        return None
    e = html.escape
    rows = [(label, cal[key]) for key, label in VARIANTS if key in cal]
    if "prior_correction" in cal and not cal["prior_correction"]:
        status = "Prior correction: off (the network was trained on the data's own class prior, or it was turned off)."
    elif "prior_correction" in cal:
        status = "Prior correction: on."
    else:
        status = "No calibration data in the model (trained outside `imbalance run`): raw probabilities only."
    t = cal.get("temperature", {}).get("T")
    if t is not None:
        status += f" Temperature T = {t:.3f} (fitted on the validation split)."
    fname = "reliability.png"
    png = plot_reliability(cal, figs / fname, save, plt)
    cap = ("Each point is a confidence bin: its mean confidence (x) against how often the predicted class was right "
           "(y). Points below the diagonal are over-confident. Beneath: rows per bin (log scale).")
    md = ["", "## Calibration of the probabilities", "", NOTE, "", status, "",
          "| probabilities | Brier score | ECE |", "| --- | --- | --- |"]
    md += [f"| {label} | {c['brier']:.4f} | {c['ece']:.4f} |" for label, c in rows]
    md += ["", f"![Reliability diagram](figures/{fname})", "", cap]
    b64 = base64.b64encode(png).decode("ascii")
    parts = ["<h2>Calibration of the probabilities</h2>", f"<p class='cap'>{e(NOTE)}</p>", f"<p>{e(status)}</p>",
             "<table id='calibration'><tr><th>probabilities</th><th>Brier score</th><th>ECE</th></tr>"]
    parts += [f"<tr><td>{e(label)}</td><td>{c['brier']:.4f}</td><td>{c['ece']:.4f}</td></tr>" for label, c in rows]
    parts += ["</table>", f"<img alt='Reliability diagram' src='data:image/png;base64,{b64}'>",
              f"<p class='cap'>{e(cap)}</p>"]
    return Section(md, "\n".join(parts), [Figure("Reliability diagram", fname, png, cap)])


__all__ = ["calibration_section", "plot_reliability"]
