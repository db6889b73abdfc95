"""``imbalance experiment``: methods × imbalance levels × seeds, with statistics.

Each trial is one full pipeline run (:func:`pipeline.run.run_pipeline`: split, sample, train on
Ray Train workers, predict, evaluate) with the base config plus the level's and the method's
overrides and ``run.seed = seed``, in ``<experiment.out>/trials/<level>__<method>__s<seed>/``.
Finished trials are not rerun (their stage markers match), so an interrupted experiment resumes.
The trials' headline metrics are collected into one table and reported by
:func:`pipeline.experiment_stats.write_experiment_report`: mean ± std and 95% confidence
intervals per method and level, a Friedman test across methods with Nemenyi and Wilcoxon–Holm
post-hoc tests, critical-difference diagrams and plots of each metric against ρ.

Config (``experiment`` section)::

    experiment:
      out: runs/exp-digits
      seeds: [0, 1, 2]
      levels:                       # each: a name, its rho (for plots) and config overrides
        - {name: rho10, rho: 10, overrides: {data.protocol: step, data.protocol_rho: 10}}
      methods:                      # each: a name and config overrides
        - {name: baseline}
        - {name: ros, overrides: {sample.strategy: ros}}

Trials run one after another in this process; each trial's training is itself data-parallel on
Ray Train workers.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

from pipeline.config import Config, config_from_dict, merge_overrides
from pipeline.errors import ConfigError
from pipeline.io import local_path, read_json, write_json
from pipeline.run import log, run_pipeline

TRIAL_METRICS = ["macro_f1", "g_mean", "balanced_accuracy", "macro_roc_auc", "macro_pr_auc", "l5_f1", "rest_f1",
                 "accuracy"]
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


def _entries(raw, what: str) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"config key 'experiment.{what}' must be a non-empty list")
    out = []
    for i, e in enumerate(raw):
        if isinstance(e, str):
            e = {"name": e}
        if not isinstance(e, dict) or "name" not in e:
            raise ConfigError(f"config key 'experiment.{what}[{i}]' needs a 'name'")
        unknown = set(e) - {"name", "overrides", "rho"}
        if unknown:
            raise ConfigError(f"unknown config key 'experiment.{what}[{i}].{sorted(unknown)[0]}'")
        if not _NAME.match(str(e["name"])):
            raise ConfigError(f"config key 'experiment.{what}[{i}].name': use letters, digits, . _ + - only")
        ov = e.get("overrides") or {}
        if not isinstance(ov, dict):
            raise ConfigError(f"config key 'experiment.{what}[{i}].overrides' must be a mapping key: value")
        out.append({"name": str(e["name"]), "overrides": ov, "rho": e.get("rho")})
    return out


def trial_config(base: Config, level: dict, method: dict, seed: int, out: Path) -> Config:
    """The config of one trial: base + level overrides + method overrides + seed and run dir."""
    data = copy.deepcopy(base.to_dict())
    data.pop("experiment", None)
    overrides = [f"{k}={_yaml(v)}" for k, v in {**level["overrides"], **method["overrides"]}.items()]
    merge_overrides(data, overrides)
    data["run"]["seed"] = int(seed)
    data["run"]["root"] = str(out / "trials")
    data["run"]["id"] = f"{level['name']}__{method['name']}__s{seed}"
    return config_from_dict(data)


def _yaml(v) -> str:
    import yaml

    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def run_experiment(cfg: Config) -> str:
    """Run (or resume) every trial of the grid, then write the statistics report; return its directory."""
    import pandas as pd

    from pipeline.experiment_stats import write_experiment_report

    exp = cfg.experiment
    levels = _entries(exp.levels or [{"name": "base"}], "levels")
    methods = _entries(exp.methods, "methods")
    seeds = [int(s) for s in exp.seeds]
    if not seeds:
        raise ConfigError("config key 'experiment.seeds' must list at least one seed")
    out = local_path(exp.out or Path(cfg.run.root) / f"experiment-{cfg.run.id}")
    out.mkdir(parents=True, exist_ok=True)
    # validate every trial's config before running anything
    grid = [(lv, m, s, trial_config(cfg, lv, m, s, out)) for lv in levels for m in methods for s in seeds]
    rows = []
    for i, (lv, m, s, tcfg) in enumerate(grid, 1):
        log(f"experiment: trial {i}/{len(grid)}: level {lv['name']}, method {m['name']}, seed {s}")
        run_dir = Path(run_pipeline(tcfg))
        summary = read_json(run_dir / "summary.json")
        row = {"method": m["name"], "level": lv["rho"] if lv["rho"] is not None else lv["name"],
               "level_name": lv["name"], "seed": s, "run_dir": str(run_dir),
               "train_seconds": summary["seconds"].get("train")}
        row.update({k: summary["metrics"].get(k) for k in TRIAL_METRICS})
        rows.append(row)
        write_json(out / "trials.json", rows)
    trials = pd.DataFrame(rows)
    metrics = [m for m in TRIAL_METRICS if trials[m].notna().any()]
    write_experiment_report(trials, out, metrics=metrics, title=f"Experiment {cfg.run.id}")
    log(f"experiment: {len(rows)} trials; report: {out / 'report.html'}")
    return str(out)
