"""``run.seeds: [0, 1, 2]``: every model trains once per seed, on the same data.

One trained model answers for one draw of the training randomness (initial weights, the order
the reader delivers rows in, dropout), not for the method. With ``run.seeds`` the data stages,
the split (``split.seed``, default ``run.seed``) and the sampled and materialized training sets
are shared; only ``train.seed`` changes. The first seed trains in the run directory itself, each
other one in ``<run>/seeds/<seed>/``, a child run (:mod:`pipeline.flows.child_runs`) with its
own predictions and metrics, tracked as an MLflow run nested under the model's run. A reference
model of ``run.compare_with`` trains the same seeds under its own directory.

The ``seed_spread`` stage writes ``<run>/seed_spread/spread.json``: the headline metrics of each
seed and their mean, standard deviation, minimum and maximum
(:func:`pipeline.evaluation.seed_spread.spread`), which the console, ``summary.json``, MLflow and
the report show beside the run's own numbers.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.evaluation.seed_spread import HEADLINE_NAMES, headline, spread
from pipeline.flows.child_runs import child_config, link_stages
from pipeline.io import atomic_dir, read_json, read_success, write_json

# a seed changes only train.seed, so these stages' fingerprints are the first seed's
SHARED_STAGES = ("sample", "materialize", "sample_pretrain", "materialize_pretrain")


def training_seeds(cfg: Config) -> list[int]:
    """The seeds each model trains with: ``run.seeds``, else the one ``train.seed`` (default ``run.seed``)."""
    raw = cfg.run.seeds
    if raw is None:
        return [cfg.train.seed if cfg.train.seed is not None else cfg.run.seed]
    if (not isinstance(raw, list) or not raw
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in raw)):
        raise ConfigError(f"config key 'run.seeds': expected a non-empty list of integers >= 0, got {raw!r}")
    if len(set(raw)) != len(raw):
        raise ConfigError(f"config key 'run.seeds': a seed appears twice in {raw}")
    return list(raw)


def first_seed(cfg: Config) -> Config:
    """``cfg`` training with its first seed (``train.seed = run.seeds[0]``); unchanged without ``run.seeds``."""
    s = training_seeds(cfg)[0]
    if cfg.run.seeds is None or cfg.train.seed == s:
        return cfg
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=s))


def seed_run_dirs(run_dir: Path, seeds: list[int]) -> list[Path]:
    """The run directory of each seed: the first seed's is ``run_dir`` itself."""
    return [run_dir] + [run_dir / "seeds" / str(s) for s in seeds[1:]]


def train_other_seeds(cfg: Config, run_dir: Path, data_dir: Path, protocol_name: str,
                      run_fn: Callable[..., str]) -> list[Path]:
    """Run (or resume) the child run of every seed after the first; return all seeds' run directories.

    ``run_fn`` is :func:`pipeline.flows.run.run_pipeline` with the parent's MLflow run bound.
    """
    seeds = training_seeds(cfg)
    dirs = seed_run_dirs(run_dir, seeds)
    for s, d in zip(seeds[1:], dirs[1:]):
        link_stages(run_dir, d, SHARED_STAGES)
        child = child_config(cfg, d.parent, d.name, dataclasses.replace(cfg.train, seed=s))
        run_fn(child, data_dir=str(data_dir), protocol_name=protocol_name, tracking_tags={"kind": "seed", "seed": s})
    return dirs


def spread_stage(runner, seeds: list[int], dirs: list[Path]) -> str:
    """The ``seed_spread`` stage over the seeds' evaluations; return its fingerprint."""
    key = {str(s): read_success(d / "evaluate") for s, d in zip(seeds, dirs)}

    def _spread(out: Path) -> None:
        per_seed = {}
        for s, d in zip(seeds, dirs):
            m = read_json(d / "evaluate" / "metrics.json")
            per_seed[str(s)] = headline(m) | ({"adjusted_macro_f1": m["adjusted"]["macro"]["f1"]}
                                              if "adjusted" in m else {})
        with atomic_dir(out) as tmp:
            write_json(Path(tmp) / "spread.json", {
                "seeds": seeds, "run_dirs": [str(d) for d in dirs], "per_seed": per_seed,
                "metrics": spread(list(per_seed.values()))})

    return runner.stage("seed_spread", key, _spread)


def format_spread(sp: dict) -> str:
    """One console line: the mean, standard deviation and range over the seeds of the headline metrics."""
    names = HEADLINE_NAMES | {"adjusted_macro_f1": "macro F1 after threshold moving"}
    parts = [f"{names.get(k, k)} {v['mean']:.4f} ± {v['sd']:.4f} [{v['min']:.4f}, {v['max']:.4f}]"
             for k, v in sp["metrics"].items() if k in ("macro_f1", "balanced_accuracy", "l5_f1", "rest_f1",
                                                          "adjusted_macro_f1")]
    return (f"over {len(sp['seeds'])} training seeds ({', '.join(map(str, sp['seeds']))}), mean ± sd [min, max]: "
            + " | ".join(parts))
