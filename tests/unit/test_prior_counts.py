"""Threshold moving's priors count unique training examples (Buda et al.): ROS copies are not new
examples, RUS / caps remove examples."""
from __future__ import annotations

import json

from pipeline.flows.run import prior_counts


def _manifest(tmp_path, input_counts, achieved):
    (tmp_path / "sample").mkdir(parents=True, exist_ok=True)
    (tmp_path / "sample" / "manifest.json").write_text(json.dumps({"input_counts": input_counts,
                                                                  "achieved": achieved}))


def test_ros_priors_are_the_original_counts(tmp_path):
    _manifest(tmp_path, {"0": 500, "1": 40, "2": 5}, {"0": 500, "1": 500, "2": 500})
    assert prior_counts(tmp_path, "unused") == {"0": 500, "1": 40, "2": 5}


def test_rus_and_hybrid_priors_are_the_kept_counts(tmp_path):
    _manifest(tmp_path, {"0": 500, "1": 40, "2": 5}, {"0": 5, "1": 5, "2": 5})
    assert prior_counts(tmp_path, "unused") == {"0": 5, "1": 5, "2": 5}
    _manifest(tmp_path, {"0": 500, "1": 40, "2": 5}, {"0": 100, "1": 40, "2": 20})   # cap 100, floor 20
    assert prior_counts(tmp_path, "unused") == {"0": 100, "1": 40, "2": 5}
