"""The trained-model artifact on disk: file names, and loading a network (and its centers) back.

A model directory holds ``model.pt`` (the best epoch's state_dict), ``model.json`` (everything
needed to rebuild and judge it), and where used ``centroids.pt`` (category centers) and the
method's inference state. Everything is read with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from pipeline.config import ModelSection
from pipeline.errors import InputError
from pipeline.io import local_path, read_json
from pipeline.train.models import build_model

MODEL_FILE = "model.pt"
META_FILE = "model.json"
CENTROIDS_FILE = "centroids.pt"             # category centers in a checkpoint and in the model artifact


def load_weights(path: str | Path) -> dict:
    """A state_dict saved by this package (``weights_only=True``: no pickled code runs)."""
    return torch.load(str(path), map_location="cpu", weights_only=True)


def load_model(model_dir: str, device="cpu") -> tuple[torch.nn.Module, dict]:
    """(network with the best weights, in eval mode; its ``model.json``) from a model directory."""
    d = local_path(model_dir)
    if not (d / MODEL_FILE).is_file() or not (d / META_FILE).is_file():
        raise InputError(f"{model_dir} is not a model directory (needs {MODEL_FILE} and {META_FILE})")
    meta = read_json(d / META_FILE)
    known = set(ModelSection.__dataclass_fields__)
    section = ModelSection(**{k: v for k, v in meta["model"].items() if k in known})
    model = build_model(section, tuple(meta["input_shape"]), meta["n_classes"])
    model.load_state_dict(load_weights(d / MODEL_FILE))
    model.to(device).eval()
    return model, meta


def load_centroids(model_dir: str, meta: Optional[dict] = None) -> Optional[torch.Tensor]:
    """The category centers of a model directory ((n_classes, d) float32), or None when it has none."""
    d = local_path(model_dir)
    meta = meta if meta is not None else read_json(d / META_FILE)
    cc = meta.get("category_centers")
    if not cc:
        return None
    f = d / cc.get("file", CENTROIDS_FILE)
    if not f.is_file():
        raise InputError(f"{model_dir}: model.json names category centers but {f.name} is missing")
    c = load_weights(f)
    if not isinstance(c, torch.Tensor) or c.dim() != 2 or c.shape[0] != meta["n_classes"]:
        raise InputError(f"{f}: expected a ({meta['n_classes']}, d) tensor of class centroids")
    return c.float()


__all__ = ["MODEL_FILE", "META_FILE", "CENTROIDS_FILE", "load_weights", "load_model", "load_centroids"]
