"""One ``imbalance recommend`` run as a subprocess, its outputs read back (for the tier's fixtures)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def recommend(config: Path, root: Path, *overrides: str) -> dict:
    """Run ``imbalance recommend config`` under ``root`` (its own SQLite MLflow store); return the
    output directory, ``recommendation.json`` and ``search.json``."""
    out = root / "out"
    cmd = [sys.executable, "-m", "pipeline.cli", "recommend", str(config), f"run.root={root}", f"recommend.out={out}",
           f"tracking.uri=sqlite:///{root}/mlflow.db", *overrides]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return {"out": out, "rec": json.loads((out / "recommendation.json").read_text()),
            "search": json.loads((out / "search.json").read_text())}
