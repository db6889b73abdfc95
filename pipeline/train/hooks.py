"""The registry of training methods that are hooks: every such method, imported here and so registered.

:mod:`pipeline.train.hook_base` defines :class:`MethodHook` and how a method takes part in
training; the methods live one per module in :mod:`pipeline.train.cost` and
:mod:`pipeline.train.features`. This module is what the loop, the Ray wiring, prediction and
configuration checks ask: which methods exist (:func:`hook_names`), the hook for a config
(:func:`build_hook`) and how a saved model scores rows (:func:`predict_scores`).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Optional

import torch

from pipeline.errors import InputError
from pipeline.train import PIPELINE_METHODS

# importing the method modules registers them in HOOKS
from pipeline.train.cost import cosen, search  # noqa: F401
from pipeline.train.features import crl, dos, lmle  # noqa: F401
from pipeline.train.hook_base import (
    HOOKS,
    METHOD_STATE_FILE,
    METHOD_SUMMARY_FILE,
    EpochContext,
    MethodHook,
    read_inference_state,
    register,
    save_inference_state,
)


def hook_names() -> list[str]:
    return sorted(HOOKS)


def build_hook(method: str, params: dict, n_classes: int, class_counts, feature_dim: int) -> MethodHook:
    """The hook for ``train.method`` (the default hook for pipeline-level methods like two_phase)."""
    if method in PIPELINE_METHODS:
        cls = MethodHook
    elif method in HOOKS:
        cls = HOOKS[method]
    else:
        raise InputError(f"train.method: unknown method '{method}' "
                         f"(choose from: {', '.join(list(PIPELINE_METHODS) + sorted(HOOKS))})")
    return cls(params, n_classes, class_counts, feature_dim)


def hook_module(method: str) -> Optional[str]:
    """The module that registered ``method`` (so that Ray workers can import it too), or None."""
    return HOOKS[method].__module__ if method in HOOKS else None


def load_inference_state(model_dir: str | Path) -> Optional[tuple[str, dict]]:
    """(method, state) saved with a model, or None; imports a user's own hook module when named."""
    blob = read_inference_state(model_dir)
    if blob is None:
        return None
    if blob["method"] not in HOOKS and blob.get("module"):
        try:  # a hook registered outside pipeline.train (a user's own module)
            importlib.import_module(blob["module"])
        except ImportError:
            pass
    return blob["method"], blob["state"]


def predict_scores(method: Optional[str], state: Optional[dict], model, x: torch.Tensor) -> torch.Tensor:
    """Probabilities for a batch: the method's own rule when it saved inference state, else softmax."""
    if method and state is not None:
        if method not in HOOKS:
            raise InputError(f"the model was trained with method '{method}', which this installation does not know")
        return HOOKS[method].predict(state, model, x)
    return MethodHook.predict({}, model, x)


__all__ = ["MethodHook", "EpochContext", "HOOKS", "register", "build_hook", "hook_names", "hook_module",
           "predict_scores", "save_inference_state", "load_inference_state", "read_inference_state",
           "METHOD_STATE_FILE", "METHOD_SUMMARY_FILE"]
