"""The methods ``imbalance recommend`` searches: the survey's families that apply to the data.

:func:`auto_candidates` turns the training split's class counts into a list of candidates, each a
name, the config overrides that select it and its family. Each method comes with a small range of
its key hyperparameter, as separate candidates:

========================  ===================================================================
family                    candidates (``n_c``: rows of class c; ``ρ = max n_c / min n_c``)
========================  ===================================================================
baseline                  plain cross-entropy on the data as it is (always a candidate)
sampling (ρ ≥ 2)          ROS to balance; RUS to balance when the smallest class keeps ≥ 10 rows;
                          Lee et al.'s threshold (cap every class at the median count, or at
                          4 · min n_c); a floor raising every class to max n_c / 4. ROS and the
                          floor only while the sampled set stays within 8 × the training rows
                          (on WHOI-Plankton's profile ROS would make an epoch 20 × longer)
two-phase (ρ ≥ 2)         pre-train on the ROS set (or, where ROS is left out, the set thresholded
                          at the median count) for a third or two thirds of the epochs, then
                          fine-tune on the data as it is (Lee et al.; Buda et al.)
cost-sensitive loss       class-weighted CE (inverse frequency, power 1 and 0.5); class-balanced
                          (β 0.99, 0.999); focal (γ 1, 2); LDAM with deferred re-weighting (margin
                          0.5, re-weighting from 2/3 of the epochs); logit-adjusted (τ 1);
                          balanced softmax; CoSen (class costs learnt with the network)
two classes               mean (squared) false error, MFE and MSFE
========================  ===================================================================

On nearly balanced data (ρ < 2) only the baseline and two losses are searched: there is little for
an imbalance method to do, and fewer candidates leave more budget to the finalists' seeds.

Threshold moving by the class priors is not a separate trained candidate: every finalist is also
scored with it on the same validation rows (``<name>+prior``), at no extra training cost.

References: Johnson & Khoshgoftaar, "Survey on deep learning with class imbalance", J. Big Data 6,
27 (2019), doi:10.1186/s40537-019-0192-5, Tables 17 and 18; Lee, Park & Kim, ICIP 2016,
doi:10.1109/ICIP.2016.7533053 (threshold); Cui et al., CVPR 2019, arXiv:1901.05555 (class-balanced);
Lin et al., ICCV 2017, arXiv:1708.02002 (focal); Cao et al., NeurIPS 2019, arXiv:1906.07413
(LDAM-DRW); Khan et al., "Cost-sensitive learning of deep feature representations from imbalanced
data", IEEE TNNLS 29 (2018), doi:10.1109/TNNLS.2017.2732482 (CoSen); Menon et al., ICLR 2021,
arXiv:2007.07314 (logit adjustment); Ren et al., NeurIPS 2020,
arXiv:2007.10740 (balanced softmax); Wang et al., IJCNN 2016, doi:10.1109/IJCNN.2016.7727770 (MFE).
"""
from __future__ import annotations

from typing import Sequence

#: the smallest class must keep this many rows for random undersampling to balance the classes
RUS_MIN_ROWS = 10
#: nearly balanced below this imbalance ratio
BALANCED_RHO = 2.0
#: an oversampled training set may hold at most this many times the training split's rows
MAX_GROWTH = 8


def imbalance_ratio(counts: Sequence[int]) -> float:
    """ρ = the largest class count over the smallest non-empty one."""
    present = [int(c) for c in counts if int(c) > 0]
    return max(present) / min(present) if present else 1.0


def _candidate(name: str, family: str, **overrides) -> dict:
    return {"name": name, "family": family, "overrides": overrides}


def _sampling(counts: list[int]) -> list[dict]:
    present = sorted(c for c in counts if c > 0)
    smallest, largest = present[0], present[-1]
    median = present[len(present) // 2]
    fits = (lambda rows: rows <= MAX_GROWTH * sum(present))   # an epoch at most MAX_GROWTH times the data's
    out = []
    if fits(largest * len(present)):
        out.append(_candidate("ros", "sampling", **{"sample.strategy": "ros"}))
    if smallest >= RUS_MIN_ROWS:
        out.append(_candidate("rus", "sampling", **{"sample.strategy": "rus"}))
    caps = sorted({cap for cap in (median, 4 * smallest) if smallest < cap < largest})
    out += [_candidate(f"threshold_cap{cap}", "sampling", **{"sample.strategy": "threshold", "sample.cap": cap})
            for cap in caps]
    floor = largest // 4
    if floor > smallest and fits(sum(max(c, floor) for c in present)):
        out.append(_candidate(f"floor{floor}", "sampling", **{"sample.strategy": "floor", "sample.floor": floor}))
    return out


def _two_phase(counts: list[int], epochs: int) -> list[dict]:
    """Two-phase learning: pre-train on the balanced (ROS) set, or on Lee et al.'s thresholded set
    when ROS would grow the data too much, for a third or two thirds of ``epochs``; then fine-tune
    ``epochs`` on the data as it is."""
    present = sorted(c for c in counts if c > 0)
    median = present[len(present) // 2]
    if present[-1] * len(present) <= MAX_GROWTH * sum(present):
        name, pre = "two_phase_ros", {"strategy": "ros"}
    elif present[0] < median < present[-1]:
        name, pre = f"two_phase_cap{median}", {"strategy": "threshold", "cap": median}
    else:
        return []
    return [_candidate(f"{name}_p{p}", "two-phase", **{"train.method": "two_phase",
                                                      "train.method_params": {"pretrain": pre, "pretrain_epochs": p}})
            for p in sorted({max(1, epochs // 3), max(1, (2 * epochs) // 3)})]


def _losses(epochs: int, n_classes: int) -> list[dict]:
    drw = max(1, (2 * epochs) // 3)
    out = [_candidate("weighted_ce", "loss", **{"train.loss": "weighted_ce"}),
           _candidate("weighted_ce_p0.5", "loss", **{"train.loss": "weighted_ce",
                                                     "train.loss_params": {"power": 0.5}}),
           _candidate("class_balanced_b0.99", "loss", **{"train.loss": "class_balanced",
                                                         "train.loss_params": {"beta": 0.99}}),
           _candidate("class_balanced_b0.999", "loss", **{"train.loss": "class_balanced",
                                                          "train.loss_params": {"beta": 0.999}}),
           _candidate("focal_g1", "loss", **{"train.loss": "focal", "train.loss_params": {"gamma": 1.0}}),
           _candidate("focal_g2", "loss", **{"train.loss": "focal", "train.loss_params": {"gamma": 2.0}}),
           _candidate("ldam_drw", "loss", **{"train.loss": "ldam", "train.loss_params": {"max_margin": 0.5},
                                             "train.method_params": {"drw_epoch": drw}}),
           _candidate("logit_adjusted", "loss", **{"train.loss": "logit_adjusted"}),
           _candidate("balanced_softmax", "loss", **{"train.loss": "balanced_softmax"}),
           _candidate("cosen", "loss", **{"train.method": "cosen"})]
    if n_classes == 2:
        out += [_candidate("mfe", "loss", **{"train.loss": "mfe"}),
                _candidate("msfe", "loss", **{"train.loss": "msfe"})]
    return out


def auto_candidates(counts: Sequence[int], epochs: int) -> list[dict]:
    """The candidates for training data with these class counts, the baseline first.

    ``epochs``: the full-fidelity training length (LDAM's re-weighting starts at 2/3 of it).
    """
    counts = [int(c) for c in counts]
    n_classes = len(counts)
    baseline = [_candidate("baseline", "baseline")]
    if imbalance_ratio(counts) < BALANCED_RHO:
        return baseline + [c for c in _losses(epochs, n_classes) if c["name"] in ("weighted_ce", "focal_g2")]
    return baseline + _sampling(counts) + _two_phase(counts, epochs) + _losses(epochs, n_classes)


__all__ = ["auto_candidates", "imbalance_ratio", "RUS_MIN_ROWS", "BALANCED_RHO", "MAX_GROWTH"]
