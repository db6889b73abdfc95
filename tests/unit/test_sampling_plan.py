"""The sampling plan against imbalanced-learn's RandomUnderSampler / RandomOverSampler.

The reference is what imbalanced-learn actually outputs: we resample a label vector with the
given class sizes and count the classes of the result.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from imblearn.over_sampling import RandomOverSampler
from imblearn.under_sampling import RandomUnderSampler

from pipeline.errors import InputError
from pipeline.prep.sampling import format_manifest, plan_counts

MULTI = {0: 500, 1: 120, 2: 120, 3: 37, 4: 9}
TIED_MAX = {0: 50, 1: 50, 2: 9, 3: 20}       # two majority classes: imblearn picks the first
TIED_MIN = {0: 80, 1: 9, 2: 9, 3: 20}        # two minority classes
BINARY = {0: 400, 1: 60}


def _y(counts: dict) -> np.ndarray:
    return np.concatenate([np.full(n, c) for c, n in counts.items()])


def imblearn_counts(counts: dict, sampler: str, target) -> dict:
    y = _y(counts)
    X = np.arange(len(y)).reshape(-1, 1)
    cls = RandomUnderSampler if sampler == "rus" else RandomOverSampler
    _, y_res = cls(sampling_strategy=target, random_state=0).fit_resample(X, y)
    got = Counter(y_res.tolist())
    return {c: got.get(c, 0) for c in counts}


KEYWORDS_RUS = ["auto", "majority", "not minority", "not majority", "all"]
KEYWORDS_ROS = ["auto", "minority", "not minority", "not majority", "all"]


@pytest.mark.parametrize("counts", [MULTI, TIED_MAX, TIED_MIN, BINARY], ids=["multi", "tiedmax", "tiedmin", "binary"])
@pytest.mark.parametrize("target", KEYWORDS_RUS)
def test_rus_keywords_match_imblearn(counts, target):
    assert plan_counts(counts, "rus", target) == imblearn_counts(counts, "rus", target)


@pytest.mark.parametrize("counts", [MULTI, TIED_MAX, TIED_MIN, BINARY], ids=["multi", "tiedmax", "tiedmin", "binary"])
@pytest.mark.parametrize("target", KEYWORDS_ROS)
def test_ros_keywords_match_imblearn(counts, target):
    assert plan_counts(counts, "ros", target) == imblearn_counts(counts, "ros", target)


@pytest.mark.parametrize("sampler", ["rus", "ros"])
@pytest.mark.parametrize("ratio", [0.2, 0.3, 0.5, 0.77, 1.0])
def test_binary_float_matches_imblearn(sampler, ratio):
    assert plan_counts(BINARY, sampler, ratio) == imblearn_counts(BINARY, sampler, ratio)


def test_float_at_the_current_ratio():
    # 60/400 = 0.15: RUS keeps everything, ROS would add nothing and imblearn refuses it
    assert plan_counts(BINARY, "rus", 0.15) == imblearn_counts(BINARY, "rus", 0.15) == BINARY


def test_float_given_as_text_is_a_float():
    assert plan_counts(BINARY, "rus", "0.5") == imblearn_counts(BINARY, "rus", 0.5)


@pytest.mark.parametrize("sampler,target", [
    ("rus", {0: 100, 2: 50}), ("rus", {4: 0, 1: 120}), ("ros", {4: 300, 3: 37}), ("ros", {1: 1000}),
])
def test_dict_targets_match_imblearn(sampler, target):
    assert plan_counts(MULTI, sampler, target) == imblearn_counts(MULTI, sampler, target)


def test_dict_keys_from_json_are_strings():
    assert plan_counts(MULTI, "rus", {"0": 100}) == imblearn_counts(MULTI, "rus", {0: 100})
    labels = {"cat": 30, "dog": 10}
    assert plan_counts(labels, "ros", {"dog": 25}) == {"cat": 30, "dog": 25}


@pytest.mark.parametrize("cap", [1, 9, 37, 100, 500, 10_000])
def test_threshold_caps_like_rus_with_a_dict(cap):
    ref_target = {c: cap for c, n in MULTI.items() if n > cap}
    want = imblearn_counts(MULTI, "rus", ref_target) if ref_target else dict(MULTI)
    assert plan_counts(MULTI, "threshold", cap=cap) == want


@pytest.mark.parametrize("floor", [1, 37, 100, 501])
def test_floor_raises_like_ros_with_a_dict(floor):
    ref_target = {c: floor for c, n in MULTI.items() if n < floor}
    want = imblearn_counts(MULTI, "ros", ref_target) if ref_target else dict(MULTI)
    assert plan_counts(MULTI, "floor", floor=floor) == want


def test_hybrid_caps_and_floors():
    got = plan_counts(MULTI, "hybrid", cap=200, floor=50)
    assert got == {0: 200, 1: 120, 2: 120, 3: 50, 4: 50}
    assert plan_counts(MULTI, "hybrid", cap=100, floor=100) == {c: 100 for c in MULTI}


def test_none_keeps_every_class():
    assert plan_counts(MULTI, "none") == MULTI
    assert plan_counts(MULTI, " ROS ", "auto") == imblearn_counts(MULTI, "ros", "auto")


@pytest.mark.parametrize("sampler,target", [("ros", "majority"), ("rus", "minority")])
def test_noop_keywords_rejected_like_imblearn(sampler, target):
    with pytest.raises(ValueError):
        imblearn_counts(MULTI, sampler, target)
    with pytest.raises(InputError, match=target):
        plan_counts(MULTI, sampler, target)


@pytest.mark.parametrize("sampler,ratio", [("rus", 0.1), ("ros", 0.1), ("ros", 0.15), ("rus", 1.5), ("ros", 0.0)])
def test_bad_floats_rejected_like_imblearn(sampler, ratio):
    with pytest.raises(ValueError):
        imblearn_counts(BINARY, sampler, ratio)
    with pytest.raises(InputError):
        plan_counts(BINARY, sampler, ratio)


@pytest.mark.parametrize("kwargs,message", [
    (dict(strategy="smote"), "unknown sampling strategy"),
    (dict(strategy="rus", sampling_strategy="most"), "unknown sampling target"),
    (dict(strategy="rus", sampling_strategy={0: 501}), "rus cannot grow class 0"),
    (dict(strategy="ros", sampling_strategy={4: 8}), "ros cannot shrink class 4"),
    (dict(strategy="rus", sampling_strategy={7: 5}), "not in the data"),
    (dict(strategy="rus", sampling_strategy={0: -1}), "negative"),
    (dict(strategy="rus", sampling_strategy={0: 2.5}), "whole number"),
    (dict(strategy="rus", sampling_strategy={}), "empty"),
    (dict(strategy="rus", sampling_strategy=0.5), "binary"),
    (dict(strategy="threshold"), "needs --cap"),
    (dict(strategy="threshold", cap=-5), "--cap must be at least 1"),
    (dict(strategy="threshold", cap=0), "--cap must be at least 1"),
    (dict(strategy="floor", floor=-1), "--floor must be at least 1"),
    (dict(strategy="floor"), "needs --floor"),
    (dict(strategy="hybrid", cap=10, floor=20), "floor <= --cap"),
    (dict(strategy="hybrid", floor=20), "needs --cap"),
])
def test_bad_requests_raise_input_error(kwargs, message):
    with pytest.raises(InputError, match=message):
        plan_counts(MULTI, **kwargs)


def test_single_class_and_empty_rejected():
    with pytest.raises(InputError, match="at least 2 classes"):
        plan_counts({3: 100}, "none")
    with pytest.raises(InputError, match="at least 2 classes"):
        plan_counts({3: 100, 4: 0}, "rus")
    with pytest.raises(InputError, match="empty"):
        plan_counts({}, "rus")


def test_format_manifest_table():
    m = {"strategy": "rus", "seed": 1, "input_rows": 786, "output_rows": 45,
         "input_counts": {str(k): v for k, v in MULTI.items()},
         "planned": {str(k): 9 for k in MULTI}, "achieved": {str(k): 9 for k in MULTI}}
    text = format_manifest(m)
    lines = text.splitlines()
    assert "786 -> 45" in lines[0]
    row0 = lines[2].split()
    assert row0[:4] == ["0", "500", "9", "9"]          # largest class first
    assert lines[-1].endswith("55.6 -> 1.0")            # rho 500/9 -> 9/9


def test_format_manifest_abbreviates_many_classes():
    from pipeline.prep.sampling import format_manifest

    counts = {str(i): 1000 - i for i in range(103)}
    m = {"strategy": "none", "seed": 0, "input_rows": sum(counts.values()), "output_rows": sum(counts.values()),
         "input_counts": counts, "planned": counts, "achieved": counts}
    text = format_manifest(m)
    assert "79 more classes" in text
    assert len(text.splitlines()) == 2 + 24 + 1 + 2
    assert text.splitlines()[2].split()[0] == "0" and text.splitlines()[-3].split()[0] == "102"


def test_the_plan_is_pure_and_the_request_checked_once():
    import subprocess
    import sys

    from pipeline.prep.sampling_plan import SamplingRequest, check_request, planned_counts

    code = ("import sys, pipeline.prep.sampling_plan, pipeline.prep.sampling, pipeline.prep.sampling_report; "
            "sys.exit('pyspark' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, "the plan must not import pyspark"
    assert check_request(" Hybrid ", 200.0, 50) == SamplingRequest("hybrid", 200, 50)
    assert check_request("rus", cap=7, floor=3) == SamplingRequest("rus")      # unused knobs are dropped
    request = check_request("threshold", cap=100)
    assert planned_counts(MULTI, request) == plan_counts(MULTI, "threshold", cap=100)
