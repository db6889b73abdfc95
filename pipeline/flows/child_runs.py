"""Runs inside a run: reference models (``run.compare_with``) and extra training seeds (``run.seeds``).

A child run is an ordinary run directory under its parent's (``<run>/compare/<method>/``,
``<run>/seeds/<seed>/``). It reads the parent's data stages through ``data_dir``, and the parent's
sampled and materialized training sets are linked into it: their ``_SUCCESS`` fingerprints match,
because a child changes only the ``train`` section, so the child skips them. It is tracked in the
parent's MLflow store and experiment, nested under the parent's run.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from pipeline.config import Config, TrainSection
from pipeline.flows.tracking import tracking_uri


def child_config(cfg: Config, root: Path, run_id: str, train: TrainSection) -> Config:
    """``cfg`` with ``train`` replaced, run as ``<root>/<run_id>/``, comparing with nothing and one seed."""
    run = dataclasses.replace(cfg.run, root=str(root), id=run_id, compare_with=None, seeds=None)
    tracking = dataclasses.replace(cfg.tracking, uri=tracking_uri(cfg),
                                   experiment=cfg.tracking.experiment or str(cfg.run.id))
    return dataclasses.replace(cfg, run=run, train=train, tracking=tracking)


def link_stages(run_dir: Path, child_dir: Path, names: tuple[str, ...]) -> None:
    """Link the parent's finished stage directories ``names`` into the child run directory.

    Only stages whose fingerprint the child shares may be linked: a child that redid a linked
    stage would write through the link into its parent.
    """
    child_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        src, dst = run_dir / name, child_dir / name
        if (src / "_SUCCESS").is_file() and not dst.exists():
            os.symlink(os.path.relpath(src, child_dir), dst)
