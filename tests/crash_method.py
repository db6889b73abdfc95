"""A training method for tests that kills its worker process once, mid-epoch: ``train.method: crash_once``.

``train.method_params: {crash_at: "E:S:R", marker_dir: DIR}`` makes the worker of rank ``R`` call
``os._exit(1)`` just before its batch ``S`` (0-based) of epoch index ``E`` (0-based: the log's
epoch E + 1), as a node failure would. It leaves ``DIR/.crashed-E-S-R`` behind first, so the
restarted worker (and a rerun of the same command) trains on; otherwise it trains exactly as the
baseline. A worker that resumes from a checkpoint leaves ``DIR/.resumed-after-K`` (K: the index of
the checkpoint's last epoch), so a test can tell a resumed run from one that started over.
Importing this module registers it (Ray workers import it by name: ``tests.crash_method``).
"""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.train.hooks import MethodHook, register


@register
class CrashOnce(MethodHook):
    name = "crash_once"

    def __init__(self, params, n_classes, class_counts, feature_dim):
        super().__init__(params, n_classes, class_counts, feature_dim)
        self.crash_at = tuple(int(v) for v in str(self.params["crash_at"]).split(":"))
        self.marker = Path(self.params["marker_dir"]) / ".crashed-{}-{}-{}".format(*self.crash_at)
        self.epoch, self.rank, self.step = -1, -1, 0

    def start_epoch(self, ctx) -> None:
        self.epoch, self.rank, self.step = ctx.epoch, ctx.rank, 0

    def batch_loss(self, model, x, y, loss_fn, autocast):
        if (self.epoch, self.step, self.rank) == self.crash_at and not self.marker.exists():
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.write_text("crashed here once (tests.crash_method)\n")
            os._exit(1)
        self.step += 1
        return super().batch_loss(model, x, y, loss_fn, autocast)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        (self.marker.parent / f".resumed-after-{state['epoch']}").write_text("resumed from a checkpoint\n")


def crash_overrides(crash_at: str, marker_dir) -> list[str]:
    """The config overrides that select this method: rank R dies before batch S of epoch index E."""
    return ["train.method=crash_once", f"train.method_params={{crash_at: '{crash_at}', marker_dir: '{marker_dir}'}}"]
