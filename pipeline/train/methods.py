"""Mechanics of the survey's methods that the training loop calls: pure numpy/torch, no I/O.

- Dynamic sampling (Pouyanfar et al. 2018, survey Eq. 11): per-class sample sizes for the next
  epoch from the previous epoch's per-class validation F1 — :func:`dynamic_sample_sizes`,
  :func:`dynamic_sampling_rates`.
- Category centers (Zhang et al., survey "Category centers"): each class's centroid in the
  network's deep-feature space, and classification of new rows by their nearest centroid —
  :func:`class_centroids`, :class:`CentroidAccumulator` (streaming, DDP-aware),
  :func:`nearest_centroid_predict`.
- Read-time per-class sampling lives with the readers: :mod:`pipeline.stream.read_sampling`.

Labels are the dense indices 0..n_classes-1 the split stage writes.

References:

* S. Pouyanfar et al., "Dynamic sampling in convolutional neural networks for imbalanced data
  classification", IEEE MIPR 2018, https://doi.org/10.1109/MIPR.2018.00027
* Zhang et al., "Image Classification with Category Centers in Class Imbalance Situation", 33rd Youth
  Academic Annual Conference of Chinese Association of Automation (YAC) 2018 (survey: "Category centers")
* J. M. Johnson, T. M. Khoshgoftaar, "Survey on deep learning with class imbalance", Journal of Big
  Data 6, 27 (2019), https://doi.org/10.1186/s40537-019-0192-5
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from pipeline.errors import InputError

# --------------------------------------------------------------------------------------------
# Dynamic sampling (Pouyanfar et al.; survey Eq. 11)
# --------------------------------------------------------------------------------------------


def _as_f1(f1: Sequence[float]) -> np.ndarray:
    f = np.asarray(f1, dtype=float).ravel()
    if f.size == 0:
        raise InputError("dynamic sampling needs at least one class F1 score")
    bad = ~np.isnan(f) & ((f < 0) | (f > 1))
    if bad.any():
        raise InputError(f"F1 scores must lie in [0, 1]; got {f[bad][:5].tolist()} "
                         f"for class(es) {np.flatnonzero(bad)[:5].tolist()}")
    return f


def dynamic_sample_sizes(f1_per_class: Sequence[float], avg_class_size: float) -> np.ndarray:
    """Next iteration's sample size of every class by the survey's Eq. 11 (Pouyanfar et al. 2018):

        Sample size(F1_i, c_j) = (1 − f1_{i,j}) / Σ_{c_k ∈ C} (1 − f1_{i,k}) × N*

    where f1_{i,j} is class j's one-vs-rest F1 after iteration i and N* the average class size.
    Classes the network gets wrong are drawn more, classes it has learned less. The sizes are
    real numbers summing to N* (exactly as printed: the whole next iteration draws N* rows; pass a
    larger ``avg_class_size`` — e.g. N*·K — for a longer epoch); the reader rounds them per row.

    Edge cases (the formula is undefined or unhelpful there), chosen and documented here:
    - a class with F1 = 1 gets size 0 (nothing left to learn from it), exactly as the formula says;
    - every F1 = 1: the denominator is 0, so every class gets N*/K (uniform: no class is worse);
    - every F1 = 0: the formula already gives N*/K each;
    - a NaN F1 (the class had no validation row, so no score) is treated as 0 — not yet learned.
    """
    f = _as_f1(f1_per_class)
    n_star = float(avg_class_size)
    if not np.isfinite(n_star) or n_star < 0:
        raise InputError(f"average class size N* must be a finite number >= 0, got {avg_class_size}")
    miss = 1.0 - np.nan_to_num(f, nan=0.0)
    total = miss.sum()
    if total <= 0.0:
        return np.full(f.size, n_star / f.size)
    return miss / total * n_star


def dynamic_sampling_rates(f1: Sequence[float], class_counts: Sequence[float],
                           avg_class_size: float | None = None) -> np.ndarray:
    """Per-class sampling rates for the reader: Eq. 11's target size / the class's training size.

    N* defaults to the average class size of ``class_counts`` (total rows / number of classes).
    A rate above 1 oversamples the class (⌊rate⌋ copies of each row plus one more with probability
    frac(rate), see :func:`row_multiplicity`), below 1 undersamples it. A class with no training
    row gets rate 0 (there is nothing to draw; its share of N* is simply not drawn).
    """
    f = _as_f1(f1)
    counts = np.asarray(class_counts, dtype=float).ravel()
    if counts.size != f.size:
        raise InputError(f"got {f.size} F1 scores for {counts.size} classes")
    if np.any(~np.isfinite(counts)) or np.any(counts < 0):
        raise InputError("class counts must be finite and >= 0")
    n_star = counts.mean() if avg_class_size is None else float(avg_class_size)
    sizes = dynamic_sample_sizes(f, n_star)
    rates = np.zeros_like(sizes)
    np.divide(sizes, counts, out=rates, where=counts > 0)
    return rates


# --------------------------------------------------------------------------------------------
# Category centers (Zhang et al.)
# --------------------------------------------------------------------------------------------

def _check_labels(labels: torch.Tensor, n_classes: int, n_rows: int) -> torch.Tensor:
    labels = torch.as_tensor(labels).reshape(-1).long()
    if labels.numel() != n_rows:
        raise InputError(f"{n_rows} feature rows but {labels.numel()} labels")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise InputError(f"labels must lie in 0..{n_classes - 1}; got range "
                         f"{int(labels.min())}..{int(labels.max())}")
    return labels


def _class_sums(features: torch.Tensor, labels: torch.Tensor, n_classes: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class feature sums (float64, for exact accumulation over many batches) and counts."""
    features = torch.as_tensor(features)
    if features.dim() != 2:
        features = features.reshape(features.shape[0], -1)
    labels = _check_labels(labels, n_classes, features.shape[0]).to(features.device)
    x = features.detach().to(torch.float64)
    sums = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, device=x.device)
    sums.index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=n_classes).to(torch.float64)
    return sums, counts


def class_centroids(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Category centers: the mean deep-feature vector of each class, shape (n_classes, d).

    Zhang et al. fine-tune the CNN, map every training image to its deep features and take each
    class's centroid; new images go to the nearest one (:func:`nearest_centroid_predict`). A class
    with no sample has no centroid: its row is NaN (and is never predicted). Features of more than
    two dimensions are flattened per row. Accumulates in float64, returns the features' dtype.
    """
    features = torch.as_tensor(features)
    sums, counts = _class_sums(features, labels, n_classes)
    cent = sums / counts.unsqueeze(1)  # 0/0 -> NaN for empty classes
    dtype = features.dtype if features.is_floating_point() else torch.float32
    return cent.to(dtype)


class CentroidAccumulator:
    """Streaming category centers: per-class feature sums and counts over any number of batches.

    ``update(features, labels)`` adds a batch; ``centroids()`` returns the (n_classes, d) means
    (NaN rows for classes never seen). When ``torch.distributed`` is initialised, ``centroids()``
    first sums the per-rank sums and counts over all ranks (``all_reduce``), so every rank gets the
    centroids of the whole data set; it is then a collective call that every rank must make, and
    ``dim`` must be given (a rank that saw no batch cannot infer it). Memory is O(n_classes · d).
    """

    def __init__(self, n_classes: int, dim: int | None = None, device: str | torch.device = "cpu"):
        if n_classes < 1:
            raise InputError(f"n_classes must be >= 1, got {n_classes}")
        self.n_classes = int(n_classes)
        self.device = torch.device(device)
        self.dim = dim
        self.sums: torch.Tensor | None = None
        self.counts = torch.zeros(self.n_classes, dtype=torch.float64, device=self.device)
        if dim is not None:
            self.sums = torch.zeros(self.n_classes, int(dim), dtype=torch.float64, device=self.device)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        features = torch.as_tensor(features)
        if features.dim() != 2:
            features = features.reshape(features.shape[0], -1)
        if self.sums is None:
            self.dim = features.shape[1]
            self.sums = torch.zeros(self.n_classes, self.dim, dtype=torch.float64, device=self.device)
        if features.shape[1] != self.dim:
            raise InputError(f"feature dimension {features.shape[1]} differs from {self.dim}")
        s, c = _class_sums(features.to(self.device), torch.as_tensor(labels).to(self.device), self.n_classes)
        self.sums += s
        self.counts += c

    def reset(self) -> None:
        self.counts.zero_()
        if self.sums is not None:
            self.sums.zero_()

    def centroids(self) -> torch.Tensor:
        """(n_classes, d) float32 centroids, summed across DDP ranks when a process group exists."""
        if self.sums is None:
            raise InputError("CentroidAccumulator has no feature dimension yet: no update() and no dim given")
        sums, counts = self.sums.clone(), self.counts.clone()
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
            dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        return (sums / counts.unsqueeze(1)).to(torch.float32)


def nearest_centroid_predict(features: torch.Tensor, centroids: torch.Tensor,
                             metric: str = "euclidean") -> torch.Tensor:
    """Class index of the nearest centroid for every row (the 1-NN rule over category centers).

    ``metric="euclidean"``: smallest ‖x − c_k‖₂ (Zhang et al.); ``"cosine"``: largest cosine
    similarity x·c_k / (‖x‖‖c_k‖) (a zero vector has similarity 0 to everything). NaN centroid
    rows (classes without training samples) are never chosen; ties go to the lowest class index.
    """
    x = torch.as_tensor(features)
    if x.dim() != 2:
        x = x.reshape(x.shape[0], -1)
    c = torch.as_tensor(centroids)
    if c.dim() != 2 or c.shape[1] != x.shape[1]:
        raise InputError(f"centroids of shape {tuple(c.shape)} do not match features of dimension {x.shape[1]}")
    x, c = x.to(torch.float64), c.to(device=x.device, dtype=torch.float64)
    valid = ~torch.isnan(c).any(dim=1)
    if not bool(valid.any()):
        raise InputError("no class has a centroid (every centroid row is NaN)")
    if metric == "euclidean":
        # ‖x−c‖² = ‖x‖² − 2x·c + ‖c‖²; computed on the valid rows, +inf for the rest
        d = torch.cdist(x, torch.nan_to_num(c, nan=0.0))
        d[:, ~valid] = float("inf")
        return d.argmin(dim=1)
    if metric == "cosine":
        xn = x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)
        cn = torch.nan_to_num(c, nan=0.0)
        cn = cn / cn.norm(dim=1, keepdim=True).clamp_min(1e-300)
        sim = xn @ cn.T
        sim[:, ~valid] = float("-inf")
        return sim.argmax(dim=1)
    raise InputError(f"unknown centroid metric {metric!r}: use 'euclidean' or 'cosine'")


__all__ = ["dynamic_sample_sizes", "dynamic_sampling_rates", "class_centroids", "CentroidAccumulator",
           "nearest_centroid_predict"]
