"""Report (report.md + self-contained report.html), the CLI handler and the spark-submit job."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluation.evaluate import REPORT_INPUTS_FILE, evaluate_predictions, write_report, write_report_inputs
from tests.integration.test_evaluate import K, make_predictions, write_table

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    y, probs, pred = make_predictions(seed=4)
    adj = np.argmax(probs / np.array([0.4, 0.25, 0.15, 0.1, 0.05, 0.1]), axis=1)
    root = tmp_path_factory.mktemp("rep")
    return write_table(root / "pred", y, probs, pred, extra={"pred_adjusted": adj}), y


def _md_table_supports(md: str) -> list[int]:
    lines = md.split("## Per-class metrics")[1].splitlines()
    rows = [ln for ln in lines if ln.startswith("| ") and not ln.startswith("| class") and "---" not in ln]
    return [int(r.split("|")[2]) for r in rows]


def test_report_is_self_contained_and_sorted_by_class_size(spark, table, tmp_path):
    path, y = table
    dist = {"n_rows": 1000, "n_classes": K, "rho": 40.0,
            "classes": [{"label": c, "count": n, "fraction": n / 1000}
                        for c, n in enumerate([400, 250, 150, 100, 90, 10])]}
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "distribution.json").write_text(json.dumps(dist))
    out = tmp_path / "eval"
    evaluate_predictions(spark, str(path), str(out), report=True, distribution=str(tmp_path / "profile"))
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    sup = _md_table_supports(md)
    assert len(sup) == K and sup == sorted(sup, reverse=True)
    assert sup == sorted(np.bincount(y, minlength=K).tolist(), reverse=True)
    assert "ρ" in md and "threshold moving" in md.lower()
    for fig in ("f1_recall_vs_size", "pr_curves", "confusion_matrix", "threshold_moving", "class_distribution",
                "reliability"):
        f = out / "figures" / f"{fig}.png"
        assert f.is_file() and f.read_bytes().startswith(PNG), fig
        assert f"figures/{fig}.png" in md
    blobs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(blobs) == 6 and all(base64.b64decode(b).startswith(PNG) for b in blobs)
    assert "figures/" not in html                      # nothing outside the file
    assert json.loads((out / "metrics.json").read_text())["adjusted"]
    assert "## Calibration of the probabilities" in md and "<table id='calibration'>" in html


def test_report_computes_pr_curves_in_spark_when_metrics_lack_them(spark, table, tmp_path):
    path, _ = table
    m_dir = tmp_path / "m"
    evaluate_predictions(spark, str(path), str(m_dir), curve_classes=0)
    assert json.loads((m_dir / "metrics.json").read_text())["pr_curves"] == {}
    res = write_report(m_dir, tmp_path / "r", predictions=str(path), spark=spark)
    assert any(f.endswith("pr_curves.png") for f in res["figures"])
    png = tmp_path / "r" / "figures" / "class_distribution.png"
    assert not png.exists()


def test_report_renders_the_intervals_and_curves_the_evaluate_stage_wrote(spark, table, tmp_path):
    path, _ = table
    m_dir = tmp_path / "m"
    evaluate_predictions(spark, str(path), str(m_dir), curve_classes=0)
    computed = tmp_path / "computed"           # the report computing them itself, for reference
    write_report(m_dir, computed, predictions=str(path), spark=spark)
    inputs = write_report_inputs(m_dir, str(path), spark)
    assert (m_dir / REPORT_INPUTS_FILE).is_file() and inputs.intervals and inputs.curves
    # no predictions and no Spark at report time: it renders the saved intervals and curves
    res = write_report(m_dir, tmp_path / "r")
    assert any(f.endswith("pr_curves.png") for f in res["figures"])
    saved = json.loads((tmp_path / "r" / "intervals.json").read_text())
    assert saved == json.loads((computed / "intervals.json").read_text())
    md = (tmp_path / "r" / "report.md").read_text()
    assert md == (computed / "report.md").read_text()


def test_cli_and_job_exit_codes(spark, table, tmp_path, capsys):
    from pipeline.cli import main

    path, _ = table
    assert main(["evaluate", "--predictions", str(path), "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "report.html").is_file() and (tmp_path / "cli" / "metrics.json").is_file()
    bad = tmp_path / "bad"
    y, probs, pred = make_predictions(n=40, seed=9, absent=None, never=None)
    write_table(bad, y, probs * 3, pred, n_files=1)
    assert main(["evaluate", "--predictions", str(bad), "--out", str(tmp_path / "cli2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "normalised" in err[0]
    assert not (tmp_path / "cli2").exists()
    # the spark-submit entry point runs the same command in a fresh process
    import subprocess
    import sys

    job = Path(__file__).resolve().parents[2] / "jobs" / "evaluate.py"
    r = subprocess.run([sys.executable, str(job), "--predictions", str(bad), "--out", str(tmp_path / "job")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert not (tmp_path / "job").exists()
