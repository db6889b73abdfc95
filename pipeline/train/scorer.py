"""One trained model as a scorer: its network, its method's scoring rule and its calibration.

Batch prediction (:mod:`pipeline.train.predict`) and the MLflow model (logged by
:func:`pipeline.flows.tracking.log_model`, served from the registry) both score through
:class:`CalibratedScorer`, so ``imbalance predict``'s ``probs_corrected`` and a registered model's
output are one computation:

* raw probabilities: softmax of the network, or the method's own rule when it saved inference
  state, or category centers (:func:`pipeline.train.predict.centroid_probs`);
* ``forward(x)``: those moved to the unsampled class prior and divided by the temperature,
  :func:`pipeline.data.prior_correction.correct_probs` with ``model.json["calibration"]``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from pipeline.data.prior_correction import correct_probs, scoring_transform
from pipeline.train.hooks import load_inference_state, predict_scores
from pipeline.train.methods import nearest_centroid_predict
from pipeline.train.saved_model import load_centroids, load_model


def centroid_probs(features, centroids, metric: str = "euclidean", temperature: float = 1.0):
    """Category-center probabilities: softmax over classes of −distance / T (cosine: similarity / T).

    Classes without a centroid (NaN row) get probability 0. Float64 throughout.
    """
    f = torch.as_tensor(features).to(torch.float64)
    c = torch.as_tensor(centroids).to(torch.float64)
    valid = ~torch.isnan(c).any(dim=1)
    c0 = torch.nan_to_num(c, nan=0.0)
    if metric == "cosine":
        fn = f / f.norm(dim=1, keepdim=True).clamp_min(1e-300)
        cn = c0 / c0.norm(dim=1, keepdim=True).clamp_min(1e-300)
        score = fn @ cn.T
    else:
        score = -torch.cdist(f, c0)
    score = score / float(temperature)
    score[:, ~valid] = float("-inf")
    return torch.softmax(score, dim=1)


class CalibratedScorer(torch.nn.Module):
    """``forward(x)`` → (n, K) float64 corrected probabilities; :meth:`score` → raw probs and decisions."""

    def __init__(self, model: torch.nn.Module, meta: dict, centroids: Optional[torch.Tensor] = None,
                 method_state: Optional[tuple] = None):
        super().__init__()
        self.model = model
        self.meta = meta
        self.centroids = centroids
        self.method, self.state = method_state if method_state else (None, None)
        self.weights, self.temperature = scoring_transform(meta.get("calibration"))

    @classmethod
    def load(cls, model_dir: str) -> "CalibratedScorer":
        model, meta = load_model(model_dir, device="cpu")
        return cls(model, meta, load_centroids(model_dir, meta), load_inference_state(model_dir)).eval()

    def score(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(raw probabilities (n, K) float64, the method's decisions (n,) int) for a float batch."""
        with torch.no_grad():
            if self.centroids is None:  # softmax, or the training method's own scoring rule
                p = predict_scores(self.method, self.state, self.model, x)
                pred = p.argmax(dim=1)
            else:  # category centers: nearest centroid in deep-feature space
                cc = self.meta.get("category_centers") or {}
                _, feats = self.model(x, return_features=True)
                metric = cc.get("metric", "euclidean")
                p = centroid_probs(feats, self.centroids, metric, cc.get("temperature", 1.0))
                pred = nearest_centroid_predict(feats, self.centroids, metric)
        return p.double().numpy(), pred.numpy().astype(np.int32)

    def correct(self, probs: np.ndarray) -> np.ndarray:
        """The model's prior correction and temperature applied to raw probabilities."""
        return correct_probs(probs, self.weights, self.temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.correct(self.score(x.float())[0]))


__all__ = ["CalibratedScorer", "centroid_probs"]
