"""The base of a training method that changes more than the loss (survey Table 17): :class:`MethodHook`.

Most methods are a loss (:mod:`pipeline.train.losses`), a sampling plan or a post-processing
rule. A few also need to see the deep features, keep state between batches or epochs, or change
how a trained model scores a row: CoSen's learned class costs, LMLE's clusters and quintuplets,
DOS's in-class neighbours, CRL's hard-sample mining, and a cost vector searched after training.
Such a method is a :class:`MethodHook`, registered by name in :data:`HOOKS` (:func:`register`; the
methods themselves are imported, and so registered, by :mod:`pipeline.train.hooks`) and selected with
``train.method: <name>``; its parameters are ``train.method_params``.

The training loop (:func:`pipeline.train.loop.run_training`) calls, on every worker:

* ``start_epoch(ctx)`` before each epoch (e.g. re-cluster or refresh neighbours; ``ctx`` is an
  :class:`EpochContext` whose ``table_once()`` yields ``(x, y)`` batches covering this worker's
  shard of the training table once: use it for passes over the data, never a collect);
* ``batch_loss(model, x, y, loss_fn, autocast)`` for each batch: the scalar loss to minimise
  (default ``loss_fn(model(x), y)``; ``model(x, return_features=True)`` gives ``(logits,
  features)`` from one forward pass, also through DDP);
* ``after_step()`` after each optimizer step (e.g. an alternating cost update);
* ``state_dict()`` / ``load_state_dict(d)``: everything needed to resume, saved in every checkpoint
  (``method_state.pt``) and given back on resume;
* ``inference_state()``: what prediction needs (tensors and JSON-able values), or ``None``. It is
  saved in the model directory as ``method_state.pt`` and named in ``model.json``
  (``"train_method"``); :func:`predict_scores` then scores rows with the method's
  ``predict(state, model, x)`` instead of the plain softmax.

A hook whose ``after_fit(model_dir, cfg, val_path)`` does work (e.g. a cost search over the
validation split on Ray) runs it on the driver after training, before the model is used; it may
rewrite ``method_state.pt`` through :func:`save_inference_state`.

Workers of one data-parallel run must keep their hook state identical where it matters for the
model (all-reduce what they accumulate; ``ctx.all_reduce`` does a sum across workers).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from pipeline.io import METHOD_SUMMARY_FILE

METHOD_STATE_FILE = "method_state.pt"


@dataclass
class EpochContext:
    """What a hook may use at the start of an epoch (and at setup)."""

    model: torch.nn.Module            # the network itself (unwrapped from DDP)
    epoch: int
    n_classes: int
    class_counts: Any                 # numpy array of the training set's per-class counts
    device: torch.device
    rank: int
    world_size: int
    autocast: Any                     # the loop's autocast context (enter with ``with ctx.autocast:``)
    table_once: Callable[[], Iterator]  # () -> (x on device, y) batches over this worker's train shard
    all_reduce: Callable[[torch.Tensor], torch.Tensor]  # sum across workers (identity with one)


class MethodHook:
    """Default behaviour: plain training with ``loss_fn`` on the logits, softmax at prediction."""

    name = "baseline"
    needs_validation = False  # True: the method cannot run without a validation table (checked before training)

    def __init__(self, params: dict, n_classes: int, class_counts, feature_dim: int):
        self.params = dict(params or {})
        self.n_classes = int(n_classes)
        self.class_counts = class_counts
        self.feature_dim = int(feature_dim)

    def start_epoch(self, ctx: EpochContext) -> None:
        pass

    def batch_loss(self, model, x: torch.Tensor, y: torch.Tensor, loss_fn, autocast) -> torch.Tensor:
        with autocast:
            logits = model(x)
        return loss_fn(logits, y)

    def after_step(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def inference_state(self) -> Optional[dict]:
        return None

    @classmethod
    def after_fit(cls, model_dir: str, cfg, val_path: Optional[str]) -> None:
        pass

    @staticmethod
    def predict(state: dict, model, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (float64, rows sum to 1) for a batch; ``pred`` is their argmax."""
        return torch.softmax(model(x).float(), dim=1).double()


HOOKS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make a :class:`MethodHook` selectable as ``train.method: cls.name``."""
    HOOKS[cls.name] = cls
    return cls



def _json_summary(state: dict, max_items: int = 100_000) -> dict:
    """The values of ``state`` that JSON can hold (small tensors become lists; large ones are left out)."""
    out = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            if v.numel() <= max_items:
                out[k] = v.detach().cpu().tolist()
        elif isinstance(v, (str, int, float, bool, type(None))):
            out[k] = v
        elif isinstance(v, (list, tuple, dict)):
            try:
                json.dumps(v)
                out[k] = v
            except TypeError:
                pass
    return out


def save_inference_state(model_dir: str | Path, method: str, state: dict) -> None:
    """``method_state.pt`` (everything prediction needs) and ``method_state.json`` (its JSON-able
    part: what the report shows, e.g. a learned cost vector)."""
    module = HOOKS[method].__module__ if method in HOOKS else None
    torch.save({"method": method, "module": module, "state": state}, Path(model_dir) / METHOD_STATE_FILE)
    with open(Path(model_dir) / METHOD_SUMMARY_FILE, "w") as f:
        json.dump({"method": method, "state": _json_summary(state)}, f, indent=1)


def read_inference_state(model_dir: str | Path) -> Optional[dict]:
    """The saved blob ``{"method", "module", "state"}`` of a model directory, or None."""
    f = Path(model_dir) / METHOD_STATE_FILE
    if not f.is_file():
        return None
    return torch.load(str(f), map_location="cpu", weights_only=False)


__all__ = ["MethodHook", "EpochContext", "HOOKS", "register", "save_inference_state", "read_inference_state",
           "METHOD_STATE_FILE", "METHOD_SUMMARY_FILE"]
