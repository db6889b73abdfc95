"""Imbalance-aware classification losses (the algorithm-level methods of the survey and their successors).

Every loss is built by :func:`build_loss` and called as ``loss(logits, targets)`` with ``logits`` of
shape (N, C) (any float dtype) and ``targets`` of shape (N,) holding class indices 0..C-1.

Conventions shared by all losses
--------------------------------
* **Precision.** The loss is computed in float32 with autocast disabled, whatever the dtype of the
  logits (bf16/fp16 under autocast on CPU or GPU); the returned value is float32 and gradients flow
  back to the logits in their own dtype.
* **Reduction.** ``reduction="none"`` returns one value per sample, ``"sum"`` their sum and
  ``"mean"`` their plain mean ``sum / N`` (0 for an empty batch). For the class-weighted losses this
  is *not* PyTorch's ``cross_entropy(weight=...)`` mean, which divides by ``Σ_i w_{y_i}``: a plain
  mean keeps ``loss(reduction="mean") == loss(reduction="none").mean()`` for every loss, so a
  training loop may mask or re-weight per-sample values itself and get the same result.
  ``mfe`` and ``msfe`` are batch-level losses: see :class:`MeanFalseError` for what ``"none"``
  means there (per-sample shares whose sum is the batch loss, in value and in gradient) and why
  ``"mean"`` and ``"sum"`` both give the batch loss itself. Such losses have ``batch_level = True``.
* **Class counts.** ``class_counts`` are the training-set class sizes n_c (ints or non-negative
  reals; the scale does not matter except for ``class_balanced`` and ``drw_weights``, whose β acts
  on real counts). **A count of zero is replaced by the smallest positive count** — the class is
  treated as being as rare as the rarest class that exists — so no weight 1/n_c, margin n_c^{-1/4},
  log-prior log n_c or (1−β)/(1−β^{n_c}) is ever infinite or NaN. (Such a class never occurs as a
  training target anyway; the rule only matters if it does occur in another split.) Negative, NaN
  or all-zero counts are an :class:`InputError`.
* **Weights normalisation.** Per-class weights (``weighted_ce``, ``class_balanced``,
  :func:`drw_weights`, ``focal`` with ``alpha="balanced"``) are normalised to sum to C, so on
  balanced data they are all 1 and the loss equals plain cross-entropy (as in Cui et al. 2019,
  https://arxiv.org/abs/1901.05555).

References:

* S. Wang, W. Liu, J. Wu, L. Cao, Q. Meng, P. J. Kennedy, "Training deep neural networks on
  imbalanced data sets", IJCNN 2016, https://doi.org/10.1109/IJCNN.2016.7727770
* J. M. Johnson, T. M. Khoshgoftaar, "Survey on deep learning with class imbalance", Journal of Big
  Data 6, 27 (2019), https://doi.org/10.1186/s40537-019-0192-5
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import InputError

__all__ = [
    "LOSS_NAMES",
    "LOSS_PARAMS",
    "build_loss",
    "check_loss",
    "drw_weights",
    "class_balanced_weights",
    "inverse_frequency_weights",
    "ldam_margins",
    "ImbalanceLoss",
    "CrossEntropy",
    "WeightedCrossEntropy",
    "CostMatrixLoss",
    "FocalLoss",
    "MeanFalseError",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "BalancedSoftmaxLoss",
]

REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------------------- class-count helpers

def _counts(class_counts: Any, what: str = "class_counts") -> np.ndarray:
    """Validate class counts: a 1-D array of C >= 2 finite, non-negative numbers, not all zero."""
    if isinstance(class_counts, torch.Tensor):
        class_counts = class_counts.detach().cpu().numpy()
    try:
        arr = np.asarray(class_counts, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a list of numbers, got {class_counts!r}") from None
    if arr.ndim != 1 or arr.size < 2:
        raise InputError(f"{what} must be a 1-D list of at least 2 class sizes, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise InputError(f"{what} must be finite and non-negative, got {arr.tolist()}")
    if not np.any(arr > 0):
        raise InputError(f"{what} are all zero")
    return arr


def _effective_counts(class_counts: Any) -> np.ndarray:
    """Class counts with every zero replaced by the smallest positive count (see the module doc)."""
    arr = _counts(class_counts)
    return np.where(arr > 0, arr, arr[arr > 0].min())


def inverse_frequency_weights(class_counts: Any, power: float = 1.0) -> np.ndarray:
    """w_c ∝ n_c^{-power}, normalised so that Σ_c w_c = C (``power=1``: inverse class frequency)."""
    n = _effective_counts(class_counts)
    w = n ** (-float(power))
    return w * (len(n) / w.sum())


def class_balanced_weights(class_counts: Any, beta: float = 0.999) -> np.ndarray:
    """Cui et al. 2019, "Class-Balanced Loss Based on Effective Number of Samples" (CVPR,
    https://arxiv.org/abs/1901.05555).

    The effective number of samples of class c is E_c = (1 − β^{n_c}) / (1 − β); the weight is
    w_c = 1 / E_c = (1 − β) / (1 − β^{n_c}), normalised so that Σ_c w_c = C. β = 0 gives equal
    weights, β → 1 gives inverse class frequency. Needs real counts (β acts on n_c).
    """
    beta = float(beta)
    if not 0.0 <= beta < 1.0:
        raise InputError(f"class-balanced beta must be in [0, 1), got {beta}")
    n = _effective_counts(class_counts)
    # 1 - beta**n computed as -expm1(n * log(beta)) to stay accurate for beta close to 1.
    if beta == 0.0:
        eff = np.ones_like(n)
    else:
        eff = -np.expm1(n * math.log(beta)) / (1.0 - beta)
    w = 1.0 / eff
    return w * (len(n) / w.sum())


def drw_weights(class_counts: Any, beta: float = 0.9999) -> np.ndarray:
    """Per-class weights for the second stage of LDAM-DRW (deferred re-weighting, Cao et al. 2019,
    "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss", NeurIPS,
    https://arxiv.org/abs/1906.07413).

    These are the class-balanced weights (1 − β)/(1 − β^{n_c}) normalised to sum to C, with the β
    of Cao et al.'s code (0.9999). Training uses weight 1 for every class first and switches to
    these (``LDAMLoss.set_weight(drw_weights(counts))`` or ``build_loss("ldam", counts,
    weight=drw_weights(counts))``) after the DRW epoch, once features have been learned.
    """
    return class_balanced_weights(class_counts, beta)


def ldam_margins(class_counts: Any, max_margin: float = 0.5) -> np.ndarray:
    """LDAM margins of Cao et al. 2019 (https://arxiv.org/abs/1906.07413): m_c = C' · n_c^{-1/4}, C' chosen
    so that max_c m_c = max_margin."""
    n = _effective_counts(class_counts)
    m = n ** -0.25
    return m * (float(max_margin) / m.max())


# --------------------------------------------------------------------------- parameter helpers

def _number(loss: str, key: str, value: Any, *, low: float | None = None, low_open: bool = False,
            high: float | None = None, high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise InputError(f"loss '{loss}': parameter '{key}' must be a finite number, got {value!r}")
    v = float(value)
    if low is not None and (v < low or (low_open and v == low)):
        raise InputError(f"loss '{loss}': parameter '{key}' must be {'>' if low_open else '>='} {low}, got {v}")
    if high is not None and (v > high or (high_open and v == high)):
        raise InputError(f"loss '{loss}': parameter '{key}' must be {'<' if high_open else '<='} {high}, got {v}")
    return v


def _vector(loss: str, key: str, value: Any, n_classes: int) -> np.ndarray:
    """A per-class vector of C finite non-negative numbers."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"loss '{loss}': parameter '{key}' must be a list of {n_classes} numbers, got {value!r}") from None
    if arr.shape != (n_classes,):
        raise InputError(f"loss '{loss}': parameter '{key}' must have one value per class ({n_classes}), "
                         f"got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise InputError(f"loss '{loss}': parameter '{key}' must be finite and non-negative, got {arr.tolist()}")
    return arr


# --------------------------------------------------------------------------- base class

class ImbalanceLoss(nn.Module):
    """Base class: input checks, float32 computation outside autocast, and the reduction.

    Subclasses implement :meth:`per_sample` on float32 logits. Per-class tensors are buffers, so
    ``loss.to(device)`` moves them; they are also moved to the logits' device on the fly.
    """

    name = "base"
    batch_level = False  # True: the batch loss is not a mean of independent per-sample terms

    def __init__(self, class_counts: Any, reduction: str = "mean"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise InputError(f"loss '{self.name}': reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        counts = _counts(class_counts)
        self.reduction = reduction
        self.n_classes = int(counts.size)
        self.register_buffer("class_counts", torch.tensor(counts, dtype=torch.float32))

    def _f32(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.to(device=like.device, dtype=torch.float32)

    def per_sample(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2 or logits.shape[1] != self.n_classes:
            raise InputError(f"loss '{self.name}': logits must have shape (N, {self.n_classes}), got {tuple(logits.shape)}")
        if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
            raise InputError(f"loss '{self.name}': targets must have shape ({logits.shape[0]},), got {tuple(targets.shape)}")
        with torch.autocast(device_type=logits.device.type, enabled=False):
            z = logits.float()
            y = targets.long()
            values = self.per_sample(z, y)
            if self.reduction == "none":
                return values
            total = values.sum()
            if self.reduction == "sum" or self.batch_level:
                return total
            return total / max(int(values.shape[0]), 1)

    def extra_repr(self) -> str:
        return f"n_classes={self.n_classes}, reduction={self.reduction!r}"


def _onehot(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One-hot rows shaped like ``like`` (N, C). Unlike F.one_hot, no range check, so no GPU sync."""
    return torch.zeros_like(like).scatter_(1, y[:, None], 1.0)


def _ce(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy −log softmax(z)_y (float32, numerically stable)."""
    return F.cross_entropy(z, y, reduction="none")


# --------------------------------------------------------------------------- the losses

class CrossEntropy(ImbalanceLoss):
    """Softmax cross-entropy, the baseline: ℓ_i = −log p_{i,y_i}, p_i = softmax(z_i)."""

    name = "ce"

    def per_sample(self, z, y):
        return _ce(z, y)


class WeightedCrossEntropy(ImbalanceLoss):
    """Class-weighted cross-entropy: ℓ_i = −w_{y_i} log p_{i,y_i}.

    ``weighted_ce``: w_c ∝ n_c^{-power} (``power`` 1 = inverse class frequency, the classic
    cost-sensitive re-weighting reviewed in the survey's cost-sensitive section), normalised so that
    Σ_c w_c = C. ``class_balanced``: w_c ∝ (1 − β)/(1 − β^{n_c}) (Cui et al. 2019, "Class-Balanced
    Loss Based on Effective Number of Samples", CVPR, https://arxiv.org/abs/1901.05555), normalised so that
    Σ_c w_c = C.
    """

    def __init__(self, class_counts, reduction="mean", *, weights: np.ndarray, name: str):
        self.name = name
        super().__init__(class_counts, reduction)
        self.register_buffer("weight", torch.tensor(weights, dtype=torch.float32))

    def per_sample(self, z, y):
        return self._f32(self.weight, z)[y] * _ce(z, y)


class CostMatrixLoss(ImbalanceLoss):
    """Cost-sensitive loss from a C×C cost matrix, as in the CSDNN of Wang et al. (2018, "Predicting
    hospital readmission via cost-sensitive deep learning", IEEE/ACM TCBB; survey section
    "Cost-sensitive deep neural network (CSDNN)").

    ``cost[i][j]`` is the cost of predicting class j when the true class is i (row = true class, as
    in our confusion matrices; the survey's Table 2 writes c_ij the other way round, predicted i /
    true j, so pass its transpose).

    ``form="weighted_ce"`` (default) — cost-weighted cross-entropy:
        ℓ_i = −w_{y_i} log p_{i,y_i},   w_c = (1/(C−1)) Σ_{j≠c} cost[c][j].
    For two classes this is exactly CSDNN's loss, CE whose false-negative term is multiplied by the
    FN cost and false-positive term by the FP cost (e.g. cost [[0, 1], [2, 0]]: positives weigh 2×).
    A 0/1 cost matrix gives plain CE. Costs are used as given (not normalised), so their scale acts
    like a learning-rate factor. Chosen as the default because it keeps CE's proper-scoring,
    well-conditioned gradients (the survey: "the CE loss function was modified to incorporate a
    pre-defined cost matrix"); its limitation is that for C > 2 only each row's mean cost matters.

    ``form="expected_cost"`` — the expected misclassification cost under the softmax:
        ℓ_i = Σ_j cost[y_i][j] · p_{i,j}.
    This uses the whole matrix, but it is bounded and, like MAE, its gradient vanishes on confidently
    wrong samples, so it trains slowly from scratch; best used for fine-tuning.
    """

    name = "cost_matrix"
    FORMS = ("weighted_ce", "expected_cost")

    def __init__(self, class_counts, reduction="mean", *, cost: Any = None, form: str = "weighted_ce"):
        super().__init__(class_counts, reduction)
        c = self.n_classes
        if cost is None:
            raise InputError("loss 'cost_matrix': parameter 'cost' (a C×C matrix) is required")
        if isinstance(cost, torch.Tensor):
            cost = cost.detach().cpu().numpy()
        try:
            m = np.asarray(cost, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"loss 'cost_matrix': parameter 'cost' must be a {c}×{c} matrix of numbers") from None
        if m.shape != (c, c):
            raise InputError(f"loss 'cost_matrix': parameter 'cost' must be {c}×{c}, got shape {m.shape}")
        if not np.all(np.isfinite(m)) or np.any(m < 0):
            raise InputError("loss 'cost_matrix': parameter 'cost' must be finite and non-negative")
        if form not in self.FORMS:
            raise InputError(f"loss 'cost_matrix': parameter 'form' must be one of {', '.join(self.FORMS)}, got {form!r}")
        off = m * (1.0 - np.eye(c))
        if not np.any(off > 0):
            raise InputError("loss 'cost_matrix': parameter 'cost' has no positive off-diagonal cost")
        self.form = form
        self.register_buffer("cost", torch.tensor(m, dtype=torch.float32))
        self.register_buffer("weight", torch.tensor(off.sum(axis=1) / (c - 1), dtype=torch.float32))

    def per_sample(self, z, y):
        if self.form == "weighted_ce":
            return self._f32(self.weight, z)[y] * _ce(z, y)
        return (self._f32(self.cost, z)[y] * torch.softmax(z, dim=1)).sum(dim=1)


class FocalLoss(ImbalanceLoss):
    """Focal loss over the softmax (Lin et al. 2017, "Focal Loss for Dense Object Detection", ICCV,
    https://doi.org/10.1109/ICCV.2017.324; survey Eq. 16):

        ℓ_i = −α_{y_i} (1 − p_t)^γ log p_t,   p_t = softmax(z_i)_{y_i}.

    γ ≥ 0 down-weights easy samples (γ = 0 with no α is plain CE). ``alpha``: None (all 1), a list
    of C per-class weights, ``"balanced"`` (inverse class frequency normalised to sum to C), or, for
    two classes only, a number a meaning α = [1 − a, a] (RetinaNet's convention: a weighs class 1).
    (1 − p_t) is computed as −expm1(log p_t) and floored at 1e-12 before the power so that the
    gradient stays finite for γ < 1 when p_t rounds to 1; the floor changes the loss by < 1e-12·|log p_t|.
    """

    name = "focal"

    def __init__(self, class_counts, reduction="mean", *, gamma: float = 2.0, alpha: Any = None):
        super().__init__(class_counts, reduction)
        self.gamma = _number("focal", "gamma", gamma, low=0.0)
        c = self.n_classes
        if alpha is None:
            a = None
        elif isinstance(alpha, str):
            if alpha != "balanced":
                raise InputError(f"loss 'focal': parameter 'alpha' must be None, a list of {c} numbers, "
                                 f"'balanced' or (binary) a number, got {alpha!r}")
            a = inverse_frequency_weights(self.class_counts.numpy())
        elif isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
            if c != 2:
                raise InputError(f"loss 'focal': a single-number 'alpha' is only defined for 2 classes "
                                 f"(RetinaNet's α, 1−α); give a list of {c} per-class weights")
            a1 = _number("focal", "alpha", alpha, low=0.0, high=1.0)
            a = np.array([1.0 - a1, a1])
        else:
            a = _vector("focal", "alpha", alpha, c)
        self.register_buffer("alpha", None if a is None else torch.tensor(a, dtype=torch.float32))

    def per_sample(self, z, y):
        logpt = torch.log_softmax(z, dim=1).gather(1, y[:, None]).squeeze(1)
        loss = -logpt
        if self.gamma != 0.0:
            one_minus_pt = (-torch.expm1(logpt)).clamp_min(1e-12)
            loss = one_minus_pt.pow(self.gamma) * loss
        if self.alpha is not None:
            loss = self._f32(self.alpha, z)[y] * loss
        return loss

    def extra_repr(self):
        return super().extra_repr() + f", gamma={self.gamma}"


class MeanFalseError(ImbalanceLoss):
    """Mean (squared) false error, Wang et al. 2016, "Training deep neural networks on imbalanced data
    sets" (IJCNN, https://doi.org/10.1109/IJCNN.2016.7727770); survey Eqs. 12–15, generalised from two
    classes to C.

    With l_i = ½ ‖softmax(z_i) − onehot(y_i)‖² (the per-sample MSE term of Wang et al., with its ½)
    and, for each class c present in the batch (n_c^B > 0 samples),
        E_c = (1/n_c^B) Σ_{i: y_i = c} l_i        (two classes: FPE and FNE, Eqs. 12–13)
        MFE  = Σ_c E_c                            (Eq. 14)
        MSFE = Σ_c E_c²                           (Eq. 15; binary: ½((FPE+FNE)² + (FPE−FNE)²))
    Classes absent from the batch contribute nothing. The batch loss is not an average of samples,
    so ``reduction="mean"`` and ``"sum"`` both return it. ``reduction="none"`` returns per-sample
    *shares* s_i whose sum is the batch loss in value and in gradient:
        MFE: s_i = l_i / n_{y_i}^B,    MSFE: s_i = (l_i / n_{y_i}^B) · E_{y_i}
    (for MSFE Σ_{i∈c} s_i = E_c², and by the product rule ∇Σ s_i = Σ_c 2 E_c ∇E_c). Shares are
    relative to the batch they came from: dropping some of them does not give the loss of a smaller
    batch.
    """

    batch_level = True

    def __init__(self, class_counts, reduction="mean", *, squared: bool = False):
        self.name = "msfe" if squared else "mfe"
        super().__init__(class_counts, reduction)
        self.squared = bool(squared)

    def per_sample(self, z, y):
        c = self.n_classes
        onehot = _onehot(y, z)
        l = 0.5 * (torch.softmax(z, dim=1) - onehot).pow(2).sum(dim=1)
        n = onehot.sum(dim=0)                                   # n_c^B, batch class counts
        share = l / n.clamp_min(1.0)[y]
        if not self.squared:
            return share
        e = torch.zeros(c, dtype=z.dtype, device=z.device).index_add(0, y, share)  # E_c
        return share * e[y]


class LDAMLoss(ImbalanceLoss):
    """Label-distribution-aware margin loss (Cao et al. 2019, "Learning Imbalanced Datasets with
    Label-Distribution-Aware Margin Loss", NeurIPS, https://arxiv.org/abs/1906.07413):

        ℓ_i = −w_{y_i} log [ e^{s(z_{y_i} − m_{y_i})} / (e^{s(z_{y_i} − m_{y_i})} + Σ_{j≠y_i} e^{s z_j}) ],
        m_c = K · n_c^{-1/4},  K such that max_c m_c = ``max_margin``,

    i.e. CE on s·(z − m_y·onehot(y)), exactly as in the authors' code. ``scale`` s (default 30)
    assumes cosine logits in [−1, 1], as in the paper (use ``model.classifier: cosine``); with an
    unnormalised linear head a smaller s (e.g. 1) is the sane choice. ``weight``: per-class weights
    (default all 1); deferred re-weighting (DRW) switches them to :func:`drw_weights` late in
    training via :meth:`set_weight`.
    """

    name = "ldam"

    def __init__(self, class_counts, reduction="mean", *, max_margin: float = 0.5, scale: float = 30.0,
                 weight: Any = None):
        super().__init__(class_counts, reduction)
        self.max_margin = _number("ldam", "max_margin", max_margin, low=0.0, low_open=True)
        self.scale = _number("ldam", "scale", scale, low=0.0, low_open=True)
        self.register_buffer("margins", torch.tensor(ldam_margins(self.class_counts.numpy(), self.max_margin),
                                                     dtype=torch.float32))
        self.register_buffer("weight", torch.ones(self.n_classes))
        if weight is not None:
            self.set_weight(weight)

    def set_weight(self, weight: Any) -> None:
        """Replace the per-class weights (e.g. with :func:`drw_weights` at the DRW epoch); None → all 1."""
        w = np.ones(self.n_classes) if weight is None else _vector("ldam", "weight", weight, self.n_classes)
        self.weight.copy_(torch.tensor(w, dtype=torch.float32))

    def per_sample(self, z, y):
        m = self._f32(self.margins, z)[y]
        shifted = z - m[:, None] * _onehot(y, z)
        return self._f32(self.weight, z)[y] * _ce(self.scale * shifted, y)

    def extra_repr(self):
        return super().extra_repr() + f", max_margin={self.max_margin}, scale={self.scale}"


class LogitAdjustedLoss(ImbalanceLoss):
    """Logit-adjusted softmax cross-entropy (Menon et al. 2021, "Long-tail learning via logit
    adjustment", ICLR, https://arxiv.org/abs/2007.07314):

        ℓ_i = −log softmax(z_i + τ log π)_{y_i},   π_c = n_c / Σ_k n_k.

    Trained this way, the raw logits z are already balanced: predict with argmax z (no adjustment
    at inference). τ = 1 is Fisher-consistent for the balanced error.
    """

    name = "logit_adjusted"

    def __init__(self, class_counts, reduction="mean", *, tau: float = 1.0):
        super().__init__(class_counts, reduction)
        self.tau = _number("logit_adjusted", "tau", tau)
        n = _effective_counts(self.class_counts.numpy())
        self.register_buffer("shift", torch.tensor(self.tau * np.log(n / n.sum()), dtype=torch.float32))

    def per_sample(self, z, y):
        return _ce(z + self._f32(self.shift, z), y)

    def extra_repr(self):
        return super().extra_repr() + f", tau={self.tau}"


class BalancedSoftmaxLoss(ImbalanceLoss):
    """Balanced softmax (Ren et al. 2020, "Balanced Meta-Softmax for Long-Tailed Visual Recognition",
    NeurIPS, https://arxiv.org/abs/2007.10740):
    ℓ_i = −log [ n_{y_i} e^{z_{y_i}} / Σ_j n_j e^{z_j} ] = CE(z_i + log n, y_i).

    Equal to ``logit_adjusted`` with τ = 1 (log n and log π differ by a constant that softmax
    ignores). Predict with the raw logits.
    """

    name = "balanced_softmax"

    def __init__(self, class_counts, reduction="mean"):
        super().__init__(class_counts, reduction)
        n = _effective_counts(self.class_counts.numpy())
        self.register_buffer("shift", torch.tensor(np.log(n), dtype=torch.float32))

    def per_sample(self, z, y):
        return _ce(z + self._f32(self.shift, z), y)


# --------------------------------------------------------------------------- the factory

def _make_weighted_ce(counts, reduction, power=1.0):
    p = _number("weighted_ce", "power", power, low=0.0)
    return WeightedCrossEntropy(counts, reduction, weights=inverse_frequency_weights(counts, p), name="weighted_ce")


def _make_class_balanced(counts, reduction, beta=0.999):
    b = _number("class_balanced", "beta", beta, low=0.0, high=1.0, high_open=True)
    return WeightedCrossEntropy(counts, reduction, weights=class_balanced_weights(counts, b), name="class_balanced")


_FACTORIES: dict[str, Callable[..., ImbalanceLoss]] = {
    "ce": lambda counts, reduction: CrossEntropy(counts, reduction),
    "weighted_ce": _make_weighted_ce,
    "class_balanced": _make_class_balanced,
    "cost_matrix": lambda counts, reduction, cost=None, form="weighted_ce":
        CostMatrixLoss(counts, reduction, cost=cost, form=form),
    "focal": lambda counts, reduction, gamma=2.0, alpha=None:
        FocalLoss(counts, reduction, gamma=gamma, alpha=alpha),
    "mfe": lambda counts, reduction: MeanFalseError(counts, reduction, squared=False),
    "msfe": lambda counts, reduction: MeanFalseError(counts, reduction, squared=True),
    "ldam": lambda counts, reduction, max_margin=0.5, scale=30.0, weight=None:
        LDAMLoss(counts, reduction, max_margin=max_margin, scale=scale, weight=weight),
    "logit_adjusted": lambda counts, reduction, tau=1.0: LogitAdjustedLoss(counts, reduction, tau=tau),
    "balanced_softmax": lambda counts, reduction: BalancedSoftmaxLoss(counts, reduction),
}

#: Parameters each loss accepts (besides class_counts and reduction).
LOSS_PARAMS: dict[str, tuple[str, ...]] = {
    "ce": (),
    "weighted_ce": ("power",),
    "class_balanced": ("beta",),
    "cost_matrix": ("cost", "form"),
    "focal": ("gamma", "alpha"),
    "mfe": (),
    "msfe": (),
    "ldam": ("max_margin", "scale", "weight"),
    "logit_adjusted": ("tau",),
    "balanced_softmax": (),
}

LOSS_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def _loss_key(name: Any, params: dict) -> str:
    """The registry key of loss ``name``; InputError for an unknown name or parameter."""
    if not isinstance(name, str):
        raise InputError(f"loss name must be a string, got {name!r}")
    key = name.strip().lower().replace("-", "_")
    if key not in _FACTORIES:
        raise InputError(f"unknown loss '{name}' (known: {', '.join(LOSS_NAMES)})")
    unknown = sorted(set(params) - set(LOSS_PARAMS[key]))
    if unknown:
        allowed = ", ".join(LOSS_PARAMS[key]) or "none"
        raise InputError(f"unknown parameter(s) {', '.join(repr(u) for u in unknown)} for loss '{key}' "
                         f"(allowed: {allowed})")
    return key


def check_loss(name: str, params: dict, n_classes: int | None = None) -> str:
    """Check ``train.loss`` and ``train.loss_params`` before any data exists; return the loss key.

    The name and parameter names are checked as :func:`build_loss` checks them, and the values by
    building the loss on stand-in class counts (all equal) of ``n_classes`` classes — or, when the
    number of classes is not known yet, of the length a per-class parameter gives (``alpha``,
    ``weight``, ``cost``), else 2. So every range rule lives in the loss's own factory.
    """
    params = dict(params or {})
    key = _loss_key(name, params)
    if n_classes is None:
        n_classes = 2
        for v in params.values():
            if isinstance(v, (list, tuple)) and len(v) >= 2:
                n_classes = len(v)
                break
    try:
        _FACTORIES[key]([1.0] * int(n_classes), "mean", **params)
    except (TypeError, ValueError) as e:
        raise InputError(f"loss '{key}': bad parameters {params!r} ({e})") from None
    return key


def build_loss(name: str, class_counts: Sequence[float] | np.ndarray | torch.Tensor,
               reduction: str = "mean", **params: Any) -> ImbalanceLoss:
    """Build the loss ``name`` for training data with per-class sizes ``class_counts``.

    Names and parameters (defaults in brackets): ``ce``; ``weighted_ce`` (power [1]);
    ``class_balanced`` (beta [0.999]); ``cost_matrix`` (cost: C×C, form ['weighted_ce'] |
    'expected_cost'); ``focal`` (gamma [2], alpha [None]); ``mfe``; ``msfe``; ``ldam``
    (max_margin [0.5], scale [30], weight [None]); ``logit_adjusted`` (tau [1]);
    ``balanced_softmax``. An unknown name or parameter, or a bad value, raises InputError naming it.
    """
    key = _loss_key(name, params)
    if reduction not in REDUCTIONS:
        raise InputError(f"loss '{key}': reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    return _FACTORIES[key](class_counts, reduction, **params)
