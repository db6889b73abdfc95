"""A deliberately broken training method for tests: its loss ignores the labels.

``train.method: label_blind`` trains every batch towards class 0 whatever the true labels, so
the model learns nothing about the classes. ``imbalance recommend`` must never recommend it.
Importing this module registers it (Ray workers import it by name: ``tests.label_blind_method``).
"""
from __future__ import annotations

import torch

from pipeline.train.hooks import MethodHook, register


@register
class LabelBlind(MethodHook):
    name = "label_blind"

    def batch_loss(self, model, x, y, loss_fn, autocast):
        with autocast:
            logits = model(x)
        return loss_fn(logits, torch.zeros_like(y))
