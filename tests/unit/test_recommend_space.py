"""The candidates ``recommend.methods: auto`` searches, and the epoch budget of the search."""
import pytest

from pipeline.config import Config, merge_overrides
from pipeline.errors import ConfigError
from pipeline.flows.recommend import budget_plan, candidate_config
from pipeline.flows.recommend_search import EpochBudget
from pipeline.flows.recommend_space import BALANCED_RHO, MAX_GROWTH, RUS_MIN_ROWS, auto_candidates, imbalance_ratio
from pipeline.flows.validate import validate_config


def _names(counts, epochs=12):
    return [c["name"] for c in auto_candidates(counts, epochs)]


def test_imbalance_ratio_ignores_empty_classes():
    assert imbalance_ratio([500, 5, 0]) == 100
    assert imbalance_ratio([]) == 1.0


def test_the_baseline_comes_first_and_names_are_unique():
    for counts in ([900, 9], [100, 100, 90], [500, 400, 50, 5], [60] * 10):
        names = _names(counts)
        assert names[0] == "baseline"
        assert len(set(names)) == len(names)


def test_nearly_balanced_data_gets_a_small_space():
    counts = [100, 100, int(100 / BALANCED_RHO) + 1]
    assert _names(counts) == ["baseline", "weighted_ce", "focal_g2"]


def test_imbalanced_data_gets_every_family():
    names = _names([500] * 5 + [5] * 5)
    assert {"ros", "weighted_ce", "focal_g1", "ldam_drw", "logit_adjusted", "balanced_softmax", "cosen"} <= set(names)
    assert "rus" not in names                      # 5 rows of the smallest class are too few to balance down to
    assert "mfe" not in names                      # MFE and MSFE are two-class losses
    assert "rus" in _names([500] * 5 + [RUS_MIN_ROWS] * 5)
    assert {"mfe", "msfe"} <= set(_names([990, 10]))


def test_caps_and_floors_lie_between_the_smallest_and_largest_class():
    cands = auto_candidates([1000, 300, 100, 10], 12)
    caps = [c["overrides"]["sample.cap"] for c in cands if c["overrides"].get("sample.strategy") == "threshold"]
    assert caps == [40, 300]                       # 4 × the smallest class, and the median count
    floors = [c["overrides"]["sample.floor"] for c in cands if c["overrides"].get("sample.strategy") == "floor"]
    assert floors == [250]


def test_ldam_re_weighting_starts_at_two_thirds_of_the_epochs():
    ldam = next(c for c in auto_candidates([90, 10], 18) if c["name"] == "ldam_drw")
    assert ldam["overrides"]["train.method_params"] == {"drw_epoch": 12}


def test_every_candidate_is_a_valid_run_config():
    base = Config().to_dict()
    merge_overrides(base, ["data.synth_preset=digits", "train.epochs=6"])
    from pipeline.config import config_from_dict
    cfg = config_from_dict(base)
    for c in auto_candidates([300, 100, 30, 3], 6) + auto_candidates([990, 10], 6):
        validate_config(candidate_config(cfg, c["overrides"], 0, "macro_f1"), "run", warn=lambda w: None)


def test_budget_plan_defaults_to_a_third_of_the_grid():
    plan = budget_plan([18] * 16, 2, 3, 3, None)
    assert plan["grid"] == 16 * 3 * 18 and plan["budget"] == plan["grid"] // 3
    assert plan["least"] == 12 * 2 + 4 * 3 * 18


def test_budget_plan_counts_both_phases_of_two_phase_learning():
    plan = budget_plan([18] * 14 + [24, 30], 2, 3, 3, None)   # two two-phase candidates: 6 and 12 epochs first
    assert plan["grid"] == 3 * (14 * 18 + 24 + 30)
    assert plan["least"] == 12 * 2 + 3 * 4 * 18                 # the cheapest finalists: one-phase ones


def test_budget_plan_takes_the_least_when_a_third_is_too_little():
    plan = budget_plan([10] * 3, 1, 3, 2, None)     # every candidate is a finalist: a full grid
    assert plan["keep"] == 2 and plan["budget"] == plan["least"] == plan["grid"] == 60


def test_a_budget_below_the_least_is_a_config_error():
    with pytest.raises(ConfigError, match=r"recommend.budget.*at least 240"):
        budget_plan([18] * 16, 2, 3, 3, 200)


def _result(name, epoch, value):
    return {"config": {"trial": {"name": name}}, "training_iteration": epoch, "val_m": value}


def test_epoch_budget_stops_only_non_finalists_past_their_first_rung():
    names = ["baseline", "a", "b", "c", "d"]
    stop = EpochBudget(names, 20, epochs=6, rungs=[2, 6], keep=1, seeds=1, baseline="baseline", metric="val_m")
    for n, v in zip(names, (0.5, 0.9, 0.6, 0.7, 0.4)):
        assert not stop("t", _result(n, 1, v))     # before the first rung nothing is stopped
        assert stop.projected() <= 20
    for n, v in zip(names, (0.5, 0.9, 0.6, 0.7, 0.4)):
        assert not stop("t", _result(n, 2, v))     # every candidate gets its first rung
    assert stop.finalists() == ["a", "baseline"]
    assert stop.projected() == 5 * 2 + 2 * 4       # the finalists still lack 4 epochs each
    assert not stop("t", _result("a", 3, 0.9))
    assert not stop("t", _result("c", 3, 0.7))     # a non-finalist goes on while the projection fits...
    assert stop("t", _result("b", 3, 0.6))         # ...and is stopped once it exceeds the budget
    assert not stop("t", _result("a", 4, 0.9))     # a finalist is never stopped by the budget
    assert not stop("t", _result("baseline", 3, 0.5))


def test_epoch_budget_counts_the_unstarted_candidates_first_rung():
    stop = EpochBudget(["baseline", "a", "b"], budget=3 * 2 + 2 * 2, epochs=4, rungs=[2, 4], keep=1, seeds=1,
                       baseline="baseline", metric="val_m")
    assert not stop("t", _result("a", 2, 0.9))
    assert stop.projected() == 2 + 2 * 2 + 2 + 4   # a's 2, b's and the baseline's grace, what the finalists lack
    assert stop.projected() > 10
    assert not stop("t", _result("a", 3, 0.9))     # a is the finalist: the budget never stops it


def test_oversampling_that_would_grow_an_epoch_past_the_limit_is_left_out():
    long_tail = [50_000] + [500] * 102                      # ROS: 103 × 50,000 rows, 51 × the data
    names = _names(long_tail)
    assert "ros" not in names and "rus" in names
    assert not any(n.startswith("floor") for n in names)    # a floor at 12,500: 1,325,000 rows, 13 × the data
    assert "ros" in _names([900, 9])                         # two classes: ROS doubles the data at most
    assert MAX_GROWTH * sum(long_tail) < 103 * 50_000


def test_epoch_budget_reserves_the_finalists_other_seeds_at_their_own_length():
    stop = EpochBudget(["baseline", "a", "tp"], 100, epochs={"baseline": 4, "a": 4, "tp": 7}, rungs=[1, 3], keep=1,
                       seeds=3, baseline="baseline", metric="val_m")
    for n, v in (("baseline", 0.1), ("a", 0.2), ("tp", 0.3)):
        stop("t", _result(n, 1, v))
    assert stop.finalists() == ["tp", "baseline"]
    assert stop.projected() == 3 + (6 + 3) + 2 * (7 + 4)      # spent, what tp and the baseline lack, 2 more seeds


def test_two_phase_learning_pre_trains_for_a_third_or_two_thirds_of_the_epochs():
    cands = {c["name"]: c["overrides"] for c in auto_candidates([500] * 5 + [5] * 5, 18)}
    assert cands["two_phase_ros_p6"] == {"train.method": "two_phase", "train.method_params": {
        "pretrain": {"strategy": "ros"}, "pretrain_epochs": 6}}
    assert "two_phase_ros_p12" in cands
    long_tail = {c["name"] for c in auto_candidates([50_000] + [3000] * 60 + [500] * 42, 18)}   # ROS: too large
    assert "ros" not in long_tail and {"two_phase_cap3000_p6", "two_phase_cap3000_p12"} <= long_tail


def test_finalists_rank_by_the_rungs_reached_then_the_metric():
    from pipeline.flows.recommend_search import standing

    rungs = [2, 6, 18]
    assert standing(24, 0.5, rungs) < standing(18, 0.6, rungs)     # a longer two-phase run: no lead past the last rung
    assert standing(6, 0.1, rungs) > standing(5, 0.9, rungs)       # a further rung beats a better metric
    stop = EpochBudget(["baseline", "tp", "a"], 10**6, epochs={"baseline": 18, "tp": 30, "a": 18}, rungs=rungs, keep=1,
                       seeds=1, baseline="baseline", metric="val_m")
    stop("t", _result("tp", 24, 0.5))
    stop("t", _result("a", 18, 0.6))
    assert stop.finalists() == ["a", "baseline"]
