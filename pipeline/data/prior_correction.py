"""The corrections scoring applies to a network's probabilities: prior correction and temperature.

Pure NumPy, in the data layer so that scoring and evaluation share one formula:
:func:`pipeline.train.predict.predict` applies them to every scored row (the
``probs_corrected`` column), the MLflow model applies the same function, and the evaluate stage
scores raw and corrected probabilities with :mod:`pipeline.evaluation.calibration`.

**Prior correction.** Every sampler changes the class prior the network learns: RUS to 1:1 makes a
0.1% class look like 50%. If the network's output estimates p′(c | x) under the training prior π′
(the class distribution it was trained on) and the data it will score follows the prior π (the
training split before sampling), Bayes' rule with the class-conditional densities unchanged gives

    p(c | x) = p′(c | x) · π_c / π′_c  /  Σ_j p′(j | x) · π_j / π′_j

(Saerens, Latinne & Decaestecker 2002, "Adjusting the outputs of a classifier to new a priori
probabilities"). For binary random under-sampling of the negatives with rate β = N⁺ / N⁻ (kept
negatives over all negatives, the positives all kept) this is Dal Pozzolo, Caelen, Johnson &
Bontempi (2015), "Calibrating probability with undersampling for unbalanced classification":

    p = β p_s / (β p_s − p_s + 1)

where p_s is the probability of the positive class the under-sampled model gives.

**Temperature scaling** (Guo, Pleiss, Sun & Weinberger 2017, "On calibration of modern neural
networks"): one scalar T > 0 fitted by negative log-likelihood on the validation split,
p = softmax(z / T) with z the (prior-corrected) log-probabilities. It changes confidence, never a
row's argmax. In the binary case neither correction changes the order of the scores, so ROC and
PR AUC are unchanged; they move thresholds on the probability scale, not the ranking.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import numpy as np

_TINY = 1e-300                      # log(0) guard: a probability of exactly 0 stays (almost) 0


CORRECTION_MODES = ("auto", "on", "off")
CALIBRATORS = ("temperature",)


def correction_mode(value) -> str:
    """``evaluate.prior_correction`` normalised to auto | on | off (YAML's true/false count as on/off).

    Raises ValueError naming the accepted values.
    """
    if value is True:
        return "on"
    if value is False:
        return "off"
    v = str(value).strip().lower()
    if v not in CORRECTION_MODES:
        raise ValueError(f"expected one of {', '.join(CORRECTION_MODES)}, got {value!r}")
    return v


def check_calibrator(value) -> Optional[str]:
    """``evaluate.calibrate``: None or temperature. Raises ValueError otherwise."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    v = str(value).strip().lower()
    if v not in CALIBRATORS:
        raise ValueError(f"expected null or one of {', '.join(CALIBRATORS)}, got {value!r}")
    return v


def check_target_prior(value) -> Optional[dict]:
    """``evaluate.target_prior``: None, or a mapping class label → count or share (numbers >= 0, not
    all 0). Returns it with string keys; raises ValueError naming the problem."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"expected a mapping class label -> count or share, got {value!r}")
    out = {}
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v != v or v == float("inf"):
            raise ValueError(f"class {k!r}: expected a count or share >= 0, got {v!r}")
        out[str(k)] = float(v)
    if not sum(out.values()) > 0:
        raise ValueError("the counts or shares sum to 0")
    return out


def target_counts(target_prior: Mapping, labels: Sequence) -> dict:
    """A ``target_prior`` keyed by class label → counts keyed by class index (``labels[i]`` is class i).

    Raises ValueError for a label the data does not have; classes it does not name get 0.
    """
    index = {str(lab): i for i, lab in enumerate(labels)}
    unknown = [k for k in target_prior if str(k) not in index]
    if unknown:
        raise ValueError(f"evaluate.target_prior names class(es) {', '.join(map(str, unknown[:5]))} that the data "
                         f"does not have (classes: {', '.join(map(str, list(labels)[:10]))})")
    return {str(index[str(k)]): float(v) for k, v in target_prior.items()}


def prior_distribution(counts: Mapping | Sequence, n_classes: int) -> np.ndarray:
    """Class counts (a mapping class index → count, keys may be strings, or a sequence) → a prior."""
    c = np.zeros(n_classes, np.float64)
    if isinstance(counts, Mapping):
        for k, v in counts.items():
            c[int(k)] = float(v)
    else:
        c[:] = np.asarray(counts, np.float64)
    total = c.sum()
    if not total > 0:
        raise ValueError("prior_distribution: the class counts sum to 0")
    return c / total


def prior_weights(target_prior: Sequence[float], model_prior: Sequence[float]) -> np.ndarray:
    """w_c = π_c / π′_c: the scoring prior over the prior the model was trained on.

    A class the model never saw (π′_c = 0) keeps w_c = 1 (there is nothing to undo for it).
    """
    pi = np.asarray(target_prior, np.float64)
    pi_m = np.asarray(model_prior, np.float64)
    w = np.ones_like(pi)
    seen = pi_m > 0
    w[seen] = pi[seen] / pi_m[seen]
    return w


def prior_changed(target_prior: Sequence[float], model_prior: Sequence[float], tol: float = 1e-6) -> bool:
    """Whether training changed the class prior (any class's share moved by more than ``tol``)."""
    return bool(np.max(np.abs(np.asarray(target_prior) - np.asarray(model_prior))) > tol)


def corrected_logits(probs: np.ndarray, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """log p + log w: the log-probabilities moved to the scoring prior, before normalising."""
    z = np.log(np.maximum(np.asarray(probs, np.float64), _TINY))
    if weights is not None:
        z = z + np.log(np.asarray(weights, np.float64))[None, :]
    return z


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def correct_probs(probs: np.ndarray, weights: Optional[np.ndarray] = None, temperature: float = 1.0) -> np.ndarray:
    """p̂ = softmax((log p + log w) / T): prior correction (``weights``), then temperature ``T``.

    With ``weights=None`` and ``T=1`` there is nothing to correct: ``probs`` comes back as it is.
    """
    if weights is None and float(temperature) == 1.0:
        return np.asarray(probs, np.float64)
    return softmax(corrected_logits(probs, weights) / float(temperature))


def calibration_block(train_counts, model_counts, n_classes: int, mode: str = "auto",
                      temperature: Optional[float] = None) -> dict:
    """What a model directory's ``model.json["calibration"]`` holds: both priors, whether scoring
    applies the prior correction (``auto``: when they differ), and the temperature (None: none)."""
    pi = prior_distribution(train_counts, n_classes)
    pi_m = prior_distribution(model_counts, n_classes)
    mode = correction_mode(mode)
    on = mode == "on" or (mode == "auto" and prior_changed(pi, pi_m))
    return {"train_prior": pi.tolist(), "model_prior": pi_m.tolist(), "prior_correction": bool(on),
            "prior_correction_setting": mode, "temperature": None if temperature is None else float(temperature)}


def scoring_transform(block: Optional[Mapping]) -> tuple[Optional[np.ndarray], float]:
    """(prior weights or None, temperature) that scoring applies for a ``model.json`` calibration block.

    No block (a model trained outside ``imbalance run``): no correction, T = 1.
    """
    if not block:
        return None, 1.0
    w = prior_weights(block["train_prior"], block["model_prior"]) if block.get("prior_correction") else None
    t = block.get("temperature")
    return w, 1.0 if t is None else float(t)


# ------------------------------------------------------------------ temperature scaling
def nll_terms(logits: np.ndarray, labels: np.ndarray, beta: float) -> np.ndarray:
    """(Σ NLL, its first and second derivative in β = 1/T) of softmax(β z) over a block of rows.

    NLL(β) = Σ_i [logsumexp(β z_i) − β z_i,y]; d/dβ = Σ_i [E_q z − z_y]; d²/dβ² = Σ_i Var_q z,
    with q = softmax(β z_i). The NLL is convex in β, so Newton's method on these sums converges.
    """
    return nll_row_terms(logits, labels, beta).sum(axis=1)


def nll_row_terms(logits: np.ndarray, labels: np.ndarray, beta: float) -> np.ndarray:
    """The three terms of :func:`nll_terms` per row, shape (3, rows), for sums in any grouping."""
    z = np.where(np.isfinite(logits), logits, np.log(_TINY))
    s = beta * z
    mx = s.max(axis=1, keepdims=True)
    e = np.exp(s - mx)
    tot = e.sum(axis=1, keepdims=True)
    q = e / tot
    zy = z[np.arange(len(labels)), labels]
    lse = (mx + np.log(tot))[:, 0]
    ez = np.sum(q * z, axis=1)
    ez2 = np.sum(q * z * z, axis=1)
    return np.stack([lse - beta * zy, ez - zy, np.maximum(ez2 - ez * ez, 0.0)])


def fit_temperature(terms: Callable[[float], np.ndarray], max_iter: int = 30, tol: float = 1e-7,
                    beta_range: tuple[float, float] = (1e-3, 1e3)) -> float:
    """The temperature T = 1/β minimising the NLL; ``terms(β)`` sums :func:`nll_terms` over the data.

    Damped Newton on the convex NLL(β) from β = 1; each call of ``terms`` is one pass over the
    validation rows, so a distributed caller pays ``max_iter`` passes at most (typically 5–8).
    """
    lo, hi = beta_range
    beta = 1.0
    f, g, h = terms(beta)
    for _ in range(max_iter):
        step = -g / h if h > 0 else -np.sign(g) * beta
        t = 1.0
        while True:                      # backtracking: never accept a higher NLL
            nb = float(np.clip(beta + t * step, lo, hi))
            nf, ng, nh = terms(nb)
            if nf <= f or t < 1e-6:
                break
            t /= 2
        done = abs(nb - beta) <= tol * max(1.0, beta)
        beta, f, g, h = nb, nf, ng, nh
        if done:
            break
    return 1.0 / beta


__all__ = ["CORRECTION_MODES", "CALIBRATORS", "correction_mode", "check_calibrator", "check_target_prior",
           "target_counts", "prior_distribution", "prior_weights", "prior_changed", "corrected_logits", "softmax",
           "correct_probs", "calibration_block", "scoring_transform", "nll_terms", "nll_row_terms",
           "fit_temperature"]
