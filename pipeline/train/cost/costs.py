"""Learned class costs: the cost-scaled decision and parameter checks shared by CoSen and the cost search.

Both methods end with a **cost vector** ξ ∈ R^C_{>0} that prediction applies to the softmax outputs

    p'_c = ξ_c · p_c / Σ_k ξ_k · p_k,        pred = argmax_c p'_c = argmax_c ξ_c · p_c

(:func:`cost_scaled_probs`; on logits this is o_c + log ξ_c, the same decision). Only the ratios of
the costs matter; they are saved with the model (``method_state.pt``, ``{"costs": ...}``) and shown
by the report.
"""
from __future__ import annotations

import math

import torch

from pipeline.errors import ConfigError

# method_params that the training loop itself reads (allowed beside the method's own keys)
LOOP_KEYS = ("dynamic_sampling", "drw_epoch", "drw_beta")
SEARCH_METRICS = ("g_mean", "macro_f1", "balanced_accuracy", "macro_recall", "accuracy")


# =============================================================================================
# shared: the cost-scaled decision
# =============================================================================================
def cost_scaled_probs(probs: torch.Tensor, costs) -> torch.Tensor:
    """p'_c = ξ_c p_c / Σ_k ξ_k p_k (float64); argmax p' is the cost-sensitive decision."""
    p = probs.double()
    xi = torch.as_tensor(costs, dtype=torch.float64, device=p.device)
    s = p * xi
    return s / s.sum(dim=1, keepdim=True).clamp_min(1e-300)


def predict_with_costs(state: dict, model, x: torch.Tensor) -> torch.Tensor:
    return cost_scaled_probs(torch.softmax(model(x).float(), dim=1), state["costs"])


# =============================================================================================
# parameter validation
# =============================================================================================
def check_number(method: str, key: str, v, lo=None, hi=None, *, lo_open=False, hi_open=False, integer=False):
    name = f"train.method_params.{key}"
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(float(v))
    if integer:
        ok = ok and float(v) == int(v)
    if ok and lo is not None:
        ok = float(v) > lo if lo_open else float(v) >= lo
    if ok and hi is not None:
        ok = float(v) < hi if hi_open else float(v) <= hi
    if not ok:
        rng = (("(" if lo_open else "[") + f"{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}"
               + (")" if hi_open or hi is None else "]"))
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"config key '{name}' ({method}): expected {kind} in {rng}, got {v!r}")
    return int(v) if integer else float(v)


def check_keys(method: str, params: dict, defaults: dict) -> dict:
    if not isinstance(params, dict):
        raise ConfigError(f"config key 'train.method_params' must be a mapping, got {params!r}")
    known = set(defaults) | set(LOOP_KEYS)
    for k in params:
        if k == "category_centers" and params[k]:
            raise ConfigError(f"config key 'train.method_params.category_centers' cannot be combined with "
                              f"train.method={method} (prediction by centroids would ignore the costs)")
        if k not in known and k != "category_centers":
            raise ConfigError(f"unknown config key 'train.method_params.{k}' for train.method={method} "
                              f"(known: {', '.join(sorted(known))})")
    out = dict(defaults)
    out.update({k: v for k, v in params.items() if k in defaults})
    return out


