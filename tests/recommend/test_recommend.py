"""``imbalance recommend`` end to end on digits (step imbalance ρ = 100 on train and validation).

One recommend run is killed in the middle of its search and run again; the tests read what the
second run wrote. A deliberately broken method (its loss ignores the labels) is one candidate.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "conf" / "recommend-digits.yaml"
METHODS = ("[{name: baseline}, {name: ros, overrides: {sample.strategy: ros}}, "
           "{name: label_blind, overrides: {train.method: label_blind}}]")


def _command(root: Path, out: Path) -> list[str]:
    # the broken method is registered in the driver by importing its module first
    code = ("import sys, tests.label_blind_method; from pipeline.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-c", code, "recommend", str(CONFIG), f"run.root={root}", f"recommend.out={out}",
            "train.epochs=4", "recommend.grace_epochs=1", "recommend.seeds=[0, 1]", "recommend.finalists=2",
            f"recommend.methods={METHODS}", f"tracking.uri=sqlite:///{root}/mlflow.db"]


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def recommended(tmp_path_factory):
    root = tmp_path_factory.mktemp("recommend")
    out = root / "out"
    log = open(root / "killed.log", "w")
    proc = subprocess.Popen(_command(root, out), cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and not list((out / "tune").glob("search-*/search/*/checkpoint_*")):
            assert proc.poll() is None, (root / "killed.log").read_text()[-3000:]
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    assert not (out / "search.json").exists(), "the search ended before the kill"
    r = subprocess.run(_command(root, out), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return {"out": out, "stdout": r.stdout, "stderr": r.stderr, "root": root,
            "rec": json.loads((out / "recommendation.json").read_text()),
            "search": json.loads((out / "search.json").read_text())}


def test_a_killed_recommend_resumes_its_search(recommended):
    assert "recommend: resuming the search" in recommended["stdout"] + recommended["stderr"]
    assert recommended["stdout"].strip().splitlines()[-1] == str(recommended["out"])


def test_the_outputs_have_their_fields_and_p_best_sums_to_one(recommended):
    rec = recommended["rec"]
    assert {"metric", "best", "candidates", "baseline", "gain", "confident", "budget"} <= set(rec)
    assert rec["metric"] == "macro_f1" and rec["split"] == "val"
    assert abs(sum(c["p_best"] for c in rec["candidates"]) - 1) < 1e-9
    for c in rec["candidates"]:
        assert c["ci"][0] <= c["score"] <= c["ci"][1] or abs(c["score"] - c["ci"][0]) < 0.05
        assert c["fidelity"] == {"epochs": 4, "seeds": 2}
    assert rec["confident"] == (rec["gain"]["ci"][0] > 0)
    if not rec["confident"]:
        assert rec["best"]["name"] == "baseline" and "No method beats the baseline" in rec["message"]
    # every search trial's epochs count once; the finalists' seeds beyond the search's
    assert rec["budget"]["used"] == recommended["search"]["epochs"] + rec["budget"]["finalists"]
    assert rec["budget"]["grid"] == 3 * 2 * 4
    recommended_cfg = yaml.safe_load((recommended["out"] / "recommended.yaml").read_text())
    assert "recommend" not in recommended_cfg
    for key, value in rec["best"]["overrides"].items():
        section, name = key.split(".", 1)
        assert recommended_cfg[section][name] == value
    html = (recommended["out"] / "report.html").read_text()
    assert all(c["name"] in html for c in rec["candidates"])


def test_a_method_whose_loss_ignores_the_labels_is_never_recommended(recommended):
    rec = recommended["rec"]
    assert not rec["best"]["name"].startswith("label_blind")
    blind = [c for c in rec["candidates"] if c["name"].startswith("label_blind")]
    assert all(c["p_best"] == 0 for c in blind)
    trials = {t["name"]: t for t in recommended["search"]["trials"]}
    scores = {n: max(h["value"] for h in t["history"] if h["value"] is not None) for n, t in trials.items()}
    assert scores["label_blind"] < min(scores["baseline"], scores["ros"])


def test_recommend_never_reads_the_test_split(recommended):
    out = recommended["out"]
    test_split = out / "data" / "split" / "test"
    assert test_split.is_dir()
    assert not any("test" in p.name for p in (out / "predictions").iterdir())
    # make the test split unreadable as Parquet, forget the decision, and decide again
    for f in test_split.glob("*.parquet"):
        f.write_bytes(b"not parquet")
    (out / "recommendation.json").unlink()
    r = subprocess.run(_command(recommended["root"], out), cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    again = json.loads((out / "recommendation.json").read_text())
    assert again["candidates"] == recommended["rec"]["candidates"]
    assert "recommend: search up to date" in r.stdout + r.stderr
