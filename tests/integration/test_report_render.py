"""The report as a person sees it: rendered by headless Chromium, every image decoded, the sort works.

Chromium is a test dependency: ``scripts/install.sh --with-chromium`` installs the Debian package (CI,
``CI=true``, always does). Without it these tests skip and say so; in CI they fail instead. The page's own script marks ``<body data-images-loaded=N>`` once all N images have
decoded (naturalWidth > 0) and sorts the per-class table on load for a ``#sort=KEY`` URL hash.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from pipeline.evaluation.compare_table import compare_metrics
from pipeline.evaluation.evaluate import evaluate_predictions
from pipeline.evaluation.intervals import paired_deltas
from pipeline.evaluation.evaluate import write_report
from tests.integration.test_evaluate import K, make_predictions, write_table

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
NO_CHROMIUM = "chromium is not installed (bash scripts/install.sh --with-chromium installs it)"
if not CHROMIUM and os.environ.get("CI") != "true":
    pytestmark = pytest.mark.skip(reason=NO_CHROMIUM)


def render(url: str, profile) -> str:
    """The DOM after the page's scripts ran (virtual time lets its timers fire)."""
    assert CHROMIUM, NO_CHROMIUM
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run",
                          f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.fixture(scope="module")
def run_dir(spark, tmp_path_factory):
    """A run directory as `imbalance run` leaves it, with a reference model to compare with."""
    root = tmp_path_factory.mktemp("run")
    y, probs, pred = make_predictions(seed=4)
    rng = np.random.default_rng(1)
    ref_pred = np.where(rng.random(len(y)) < 0.3, rng.integers(0, K, len(y)), pred)
    write_table(root / "predict" / "test", y, probs, pred)
    write_table(root / "compare" / "baseline" / "predict" / "test", y, probs, ref_pred)
    evaluate_predictions(spark, str(root / "predict" / "test"), str(root / "evaluate"))
    ref_eval = root / "compare" / "baseline" / "evaluate"
    evaluate_predictions(spark, str(root / "compare" / "baseline" / "predict" / "test"), str(ref_eval))
    main_m = json.loads((root / "evaluate" / "metrics.json").read_text())
    ref_m = json.loads((ref_eval / "metrics.json").read_text())
    deltas = paired_deltas(spark, str(root / "predict" / "test"), str(root / "compare" / "baseline" / "predict" / "test"),
                           K, replicates=50)
    (root / "comparison").mkdir()
    (root / "comparison" / "comparison.json").write_text(json.dumps(
        {"method": "two_phase", "references": {"baseline": compare_metrics(main_m, ref_m, deltas)}}))
    (root / "config.json").write_text(json.dumps({"data": {"synth_preset": "tabular", "rows": 700},
                                                  "train": {"method": "two_phase", "loss": "ce", "epochs": 3},
                                                  "evaluate": {}, "sample": {"strategy": "none"},
                                                  "model": {"name": "mlp"}, "run": {"seed": 0}}))
    (root / "sample").mkdir()
    (root / "sample" / "manifest.json").write_text(json.dumps(
        {"input_counts": {str(c): int(n) for c, n in enumerate([400, 250, 150, 100, 90, 10])}}))
    hist = [{"epoch": e, "train_loss": 2.0 / (e + 1), "val_macro_f1": 0.2 * e, "val_balanced_accuracy": 0.25 * e,
             "val_recall": [min(1.0, 0.3 * e + 0.05 * c) for c in range(K)]} for e in range(1, 4)]
    (root / "train").mkdir()
    (root / "train" / "train_summary.json").write_text(json.dumps({"history": hist, "epochs_run": 3, "best_epoch": 2}))
    write_report(root / "evaluate", root / "report", predictions=str(root / "predict" / "test"), spark=spark,
                 run_dir=str(root), timings={"train": 12.0})
    return root


def _column(dom: str, table_id: str, col: int) -> list[str]:
    body = dom.split(f"id=\"{table_id}\"")[1].split("</table>")[0]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body.split("<tbody>")[1], re.S)
    return [re.findall(r"data-v=\"([^\"]*)\"", r)[col] for r in rows]


def test_rendered_report_loads_every_image_and_sorts(run_dir, tmp_path):
    page = run_dir / "report" / "report.html"
    html = page.read_text()
    n_img = html.count("<img ")
    assert n_img >= 5           # training curves, vs size, PR curves, confusion, comparison delta
    dom = render(page.as_uri(), tmp_path / "profile")
    m = re.search(r"<body[^>]*data-images-loaded=\"(\d+)\"", dom)
    assert m, "the page never saw all its images decode"
    assert int(m.group(1)) == n_img
    assert "data-sorted" not in dom.split("<body")[1].split(">")[0]   # no hash: original order

    head = dom.split("id=\"per-class\"")[1].split("</thead>")[0]
    keys = re.findall(r"data-key=\"(\w+)\"", head)
    f1_col = keys.index("f1")
    dom = render(page.as_uri() + "#sort=f1", tmp_path / "profile")
    assert re.search(r"<body[^>]*data-sorted=\"f1:asc\"", dom)
    vals = [float(v) for v in _column(dom, "per-class", f1_col) if v]
    assert len(vals) >= K - 1 and vals == sorted(vals)
    dom = render(page.as_uri() + "#sort=-f1", tmp_path / "profile")
    vals = [float(v) for v in _column(dom, "per-class", f1_col) if v]
    assert vals == sorted(vals, reverse=True)


def test_report_shows_comparison_intervals_and_warnings(run_dir):
    md = (run_dir / "report" / "report.md").read_text()
    assert "## two_phase vs baseline" in md and "Classes gained" in md and "Classes lost" in md
    assert "95% CI (stratified bootstrap)" in md and "Classes at F1 = 0" in md
    assert "⚠" in md                       # class 5 has fewer than 20 test rows
    assert "Top confusions" in md and "## What ran" in md
    assert (run_dir / "report" / "figures" / "training.png").is_file()
    # one training seed: the report and the console say that the intervals cover the test rows only
    assert "do not cover training randomness" in md and "## Across training seeds" not in md
    from pipeline.flows.compare import format_comparison
    assert "intervals cover the test rows only (one training seed)" in format_comparison(run_dir)
    assert "| class | training rows | test rows |" in md
