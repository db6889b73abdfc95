"""run.compare_with: which reference methods run, and their configs."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.flows.compare import compare_methods, reference_config

KNOWN = ["baseline", "two_phase", "cosen"]


def test_compare_with_names_and_lists():
    cfg = load_config("conf/demo.yaml")
    assert compare_methods(cfg, KNOWN) == ["baseline"]
    cfg = load_config("conf/demo.yaml", ["run.compare_with=[baseline, cosen, baseline]"])
    assert compare_methods(cfg, KNOWN) == ["baseline", "cosen"]
    assert compare_methods(load_config("conf/demo.yaml", ["run.compare_with=null"]), KNOWN) == []
    with pytest.raises(ConfigError, match="unknown method 'basline'"):
        compare_methods(load_config("conf/demo.yaml", ["run.compare_with=basline"]), KNOWN)
    with pytest.raises(ConfigError, match="run.compare_with"):
        compare_methods(load_config("conf/demo.yaml", ["run.compare_with={a: 1}"]), KNOWN)


def test_reference_config_changes_only_the_method():
    cfg = load_config("conf/demo.yaml")
    ref = reference_config(cfg, "baseline", Path("/r/demo"))
    assert ref.train.method == "baseline" and ref.train.method_params == {}
    assert ref.run.root == "/r/demo/compare" and ref.run.id == "baseline" and ref.run.compare_with is None
    # everything the shared stages key on is unchanged, so their fingerprints match
    for section in ("data", "split", "sample", "stream"):
        assert ref.section(section) == cfg.section(section)
    assert ref.run.seed == cfg.run.seed
