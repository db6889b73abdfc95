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

      parallel: 2                   # trials at once (default: one per Ray CPU when trials train in-process)

**Parallel trials on Ray.** Each trial is a Ray task running the whole pipeline in a Ray worker
process (its own SparkSession, reused by later trials in that worker). A trial that trains in its
own process (``train.num_workers: 0``, right for small data such as digits) reserves one CPU; a
trial that trains on Ray Train workers reserves none itself, and Ray queues its training workers
until CPUs are free, so one trial's Spark stages overlap another's training. At most
``experiment.parallel`` trials are in flight. Each trial's log goes to ``trials/<id>/trial.log``.

**Shared data stages.** Trials with the same data config and seed share one set of data stages
(source, profile, split) under ``data/s<seed>__<fingerprint>/``, prepared first, so every method
sees exactly the same rows; with a train-only protocol (Buda et al.) every imbalance level of a
seed also shares the split, and has its own ``protocol-<fingerprint>`` stage there.

**Threshold-moving variants.** A method entry may name ``threshold_variant: <name>``: its trial
(which sets ``evaluate.threshold_moving``) is reported twice, as the method on its raw decisions
and as ``<name>`` after threshold moving (same model, Buda et al.'s (F)/(G) rows without a second
training). Without it, a trial that sets ``evaluate.threshold_moving`` reports the moved decisions.

A trial that fails is recorded in ``trials.json`` with its one-line error and log; the others go
on, the report covers the finished ones, and the command exits non-zero naming the failures.
"""
from __future__ import annotations

import copy
import os
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import yaml

from pipeline.config import Config, config_from_dict, merge_overrides
from pipeline.engines import get_ray, get_spark
from pipeline.evaluation.intervals import blocked_deltas
from pipeline.errors import ConfigError, InputError
from pipeline.flows import tracking
from pipeline.flows.run import prepare_data, run_pipeline
from pipeline.flows.validate import validate_config
from pipeline.io import fingerprint, local_path, log, read_json, write_json

TRIAL_METRICS = ["macro_f1", "g_mean", "balanced_accuracy", "macro_roc_auc", "macro_pr_auc", "l5_f1", "rest_f1",
                 "accuracy"]
#: two-class trials add the rare-event metrics of ``metrics.json["binary"]``, named by their keys there
BINARY_METRICS = ["binary.pr_auc", "binary.roc_auc", "binary.recall_at_precision.0.5",
                  "binary.recall_at_precision.0.9", "binary.precision_at_k.0.001", "binary.precision_at_k.0.01"]
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


def method_entries(raw, what: str, section: str = "experiment",
                   keys: tuple = ("name", "overrides", "rho", "threshold_variant")) -> list[dict]:
    """The entries of ``<section>.<what>``: each ``{name, overrides, rho, threshold_variant}``, checked
    (an entry may hold only ``keys``)."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"config key '{section}.{what}' must be a non-empty list")
    out = []
    for i, e in enumerate(raw):
        if isinstance(e, str):
            e = {"name": e}
        if not isinstance(e, dict) or "name" not in e:
            raise ConfigError(f"config key '{section}.{what}[{i}]' needs a 'name'")
        unknown = set(e) - set(keys)
        if unknown:
            raise ConfigError(f"unknown config key '{section}.{what}[{i}].{sorted(unknown)[0]}'")
        if not _NAME.match(str(e["name"])):
            raise ConfigError(f"config key '{section}.{what}[{i}].name': use letters, digits, . _ + - only")
        ov = e.get("overrides") or {}
        if not isinstance(ov, dict):
            raise ConfigError(f"config key '{section}.{what}[{i}].overrides' must be a mapping key: value")
        tv = e.get("threshold_variant")
        if tv is not None and not _NAME.match(str(tv)):
            raise ConfigError(f"config key '{section}.{what}[{i}].threshold_variant': use letters, digits, . _ + - only")
        out.append({"name": str(e["name"]), "overrides": ov, "rho": e.get("rho"),
                    "threshold_variant": None if tv is None else str(tv)})
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
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


PROTOCOL_KEYS = ("protocol", "protocol_rho", "protocol_mu")


def data_dir_for(tcfg: Config, out: Path) -> tuple[Path, str]:
    """(shared data-stage directory, protocol stage name) of a trial.

    One directory per (data config, split config, seed). A train-only protocol (Buda et al.) comes
    after the split, so every imbalance level of one seed shares the split and has its own
    ``protocol-<key>`` stage; a source protocol comes first, so each level has its own directory.
    """
    data = tcfg.section("data")
    seed = tcfg.run.seed
    if data.get("protocol") and data.get("protocol_scope") == "train":
        pkey = fingerprint({k: data[k] for k in PROTOCOL_KEYS})
        base = {k: v for k, v in data.items() if k not in PROTOCOL_KEYS}
        key = fingerprint({"data": base, "split": tcfg.section("split"), "seed": seed})
        return out / "data" / f"s{seed}__{key[:10]}", f"protocol-{pkey[:10]}"
    key = fingerprint({"data": data, "split": tcfg.section("split"), "seed": seed})
    return out / "data" / f"s{seed}__{key[:10]}", "protocol"


@contextmanager
def _output_to(log_path: Path):
    """Send this process's stdout and stderr (Python and the JVM alike: file descriptors 1 and 2) to a file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _task_prepare(cfg_dict: dict, data_dir: str, protocol_name: str, log_path: str) -> dict:
    """Ray task: the data stages of one level and seed; ``{"error", "bad_input"}`` when they fail."""
    try:
        with _output_to(Path(log_path)):
            prepare_data(config_from_dict(cfg_dict), data_dir, protocol_name)
        return {}
    except Exception as e:  # noqa: BLE001 - reported on the driver in one line
        return {"error": (str(e).strip().splitlines() or [type(e).__name__])[0],
                "bad_input": isinstance(e, InputError)}


def _task_trial(cfg_dict: dict, data_dir: str, protocol_name: str, log_path: str, tags: Optional[dict] = None,
                parent_run_id: Optional[str] = None) -> dict:
    """Ray task: one trial (the whole pipeline); returns its summary, or its error in one line.
    ``tags`` / ``parent_run_id``: its MLflow run's tags and the experiment's parent run."""
    t0 = time.time()
    try:
        with _output_to(Path(log_path)):
            run_dir = run_pipeline(config_from_dict(cfg_dict), data_dir=data_dir, protocol_name=protocol_name,
                                   tracking_tags=tags, parent_run_id=parent_run_id)
        summary = read_json(Path(run_dir) / "summary.json")
        summary.update(wall_seconds=round(time.time() - t0, 2), started=t0, finished=time.time())
        return summary
    except Exception as e:  # noqa: BLE001 - one trial's failure must not stop the others
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return {"error": f"{type(e).__name__}: {first}"[:500], "wall_seconds": round(time.time() - t0, 2)}


def _parallelism(cfg: Config, trial_cfgs: list) -> int:
    """Trials in flight: ``experiment.parallel``, default as many as the Ray cluster's CPUs can train
    at once (one CPU per in-process trial; ``num_workers × cpus_per_worker`` per Ray Train trial)."""
    # deferred: ray is slow to import
    import ray

    n = cfg.experiment.parallel
    if n is None:
        per_trial = max(1.0 if t.train.num_workers == 0 else t.train.num_workers * t.train.cpus_per_worker
                        for t in trial_cfgs)
        n = max(1, int(ray.cluster_resources().get("CPU", 1) // per_trial))
    return int(n)


def _task_cpus(tcfg: Config) -> float:
    """A trial that trains in its own process holds a CPU; one on Ray Train leaves them to its workers."""
    return 1.0 if tcfg.train.num_workers == 0 else 0.0


def _run_tasks(fn, jobs: list[tuple], cpus: list[float], parallel: int, done_cb) -> None:
    """Run ``fn(*args)`` as Ray tasks, at most ``parallel`` at once; ``done_cb(job_index, result)``."""
    # deferred: ray is slow to import
    import ray

    remote = ray.remote(max_retries=0)(fn)
    pending: dict = {}
    queue = list(enumerate(jobs))
    while queue or pending:
        while queue and len(pending) < parallel:
            i, args = queue.pop(0)
            pending[remote.options(num_cpus=cpus[i]).remote(*args)] = i
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            done_cb(pending.pop(ref), ray.get(ref))


def _rows_from(summary: dict, level: dict, method: dict, seed: int) -> list[dict]:
    """The trial table's row(s) of one finished trial (two when it has a threshold-moving variant)."""
    base = {"level": level["rho"] if level["rho"] is not None else level["name"], "level_name": level["name"],
            "seed": seed, "run_dir": summary["run_dir"], "train_seconds": summary["seconds"].get("train"),
            "trial_seconds": summary.get("wall_seconds"), "started": summary.get("started"),
            "finished": summary.get("finished"), "data_dir": summary.get("data_dir"),
            **training_cost(Path(summary["run_dir"])), **binary_metrics(summary.get("binary"))}
    raw, adjusted = summary["metrics"], summary.get("metrics_adjusted")
    if method["threshold_variant"]:  # run_experiment checked that the trial moves thresholds
        return [{"method": method["name"], **base, "decisions": "raw", **{k: raw.get(k) for k in TRIAL_METRICS}},
                {"method": method["threshold_variant"], **base, "decisions": "threshold moving",
                 **{k: adjusted.get(k) for k in TRIAL_METRICS}}]
    chosen = adjusted if adjusted is not None else raw
    return [{"method": method["name"], **base, "decisions": "raw" if adjusted is None else "threshold moving",
             **{k: chosen.get(k) for k in TRIAL_METRICS}}]


def binary_metrics(binary: Optional[dict]) -> dict:
    """The :data:`BINARY_METRICS` of a trial's ``metrics.json["binary"]`` (none for multi-class data).
    Threshold moving moves decisions, not scores, so a threshold-moving variant shares them."""
    if not binary:
        return {}
    out = {}
    for name in BINARY_METRICS:
        _, field, *level = name.split(".", 2)
        value = binary.get(field)
        out[name] = value.get(level[0]) if level and isinstance(value, dict) else value
    return out


def training_cost(run_dir: Path) -> dict:
    """Rows the training loop read (all epochs, all workers) and the epochs it ran, from
    ``train/train_summary.json``."""
    path = run_dir / "train" / "train_summary.json"
    if not path.is_file():
        return {}
    ts = read_json(path)
    return {"train_rows_seen": sum(int(h.get("rows", 0)) for h in ts.get("history", [])),
            "epochs_run": ts.get("epochs_run"), "best_epoch": ts.get("best_epoch")}


def level_deltas(spark, rows: list[dict], reference: str, level_col: str, n_classes: int,
                 label_col: str = "label") -> list[dict]:
    """Each method − ``reference`` on each level, macro F1 and balanced accuracy, with the two-level
    bootstrap's 95% intervals over the seeds and each seed's own test rows
    (:func:`pipeline.evaluation.intervals.blocked_deltas`). Methods are compared on their raw
    argmax decisions, so a row whose table entry is threshold-moved is left out (the moved decisions
    are scored in the evaluation's scan, not stored in the predictions)."""
    raw = [r for r in rows if r["decisions"] == "raw"]
    out = []
    for level in dict.fromkeys(r[level_col] for r in raw):
        ref = {r["seed"]: r for r in raw if r[level_col] == level and r["method"] == reference}
        for method in dict.fromkeys(r["method"] for r in raw if r[level_col] == level and r["method"] != reference):
            mine = {r["seed"]: r for r in raw if r[level_col] == level and r["method"] == method}
            seeds = sorted(set(mine) & set(ref))
            if not seeds:
                continue
            pairs = [(f"{mine[s]['run_dir']}/predict/test", "pred", f"{ref[s]['run_dir']}/predict/test", "pred")
                     for s in seeds]
            d = blocked_deltas(spark, pairs, n_classes, seed=min(seeds), label_col=label_col)
            out.append({**d, "confidence": d["level"], "level": level, "method": method, "reference": reference,
                        "seeds": seeds, **{f"{k}_delta": sum(mine[s][k] - ref[s][k] for s in seeds) / len(seeds)
                                           for k in ("macro_f1", "balanced_accuracy")}})
    return out


def run_experiment(cfg: Config) -> str:
    """Run (or resume) every trial of the grid on Ray, then write the statistics report; return its directory."""
    levels, methods, seeds, out, grid = _checked_grid(cfg)
    out.mkdir(parents=True, exist_ok=True)
    # MLflow: a parent run for the experiment, each trial a child run in the same store and experiment
    parent = tracking.start(cfg, out, tags={"kind": "experiment"})
    tracking.log_config(parent, cfg)
    for _, _, _, tcfg in grid:
        tcfg.tracking.uri = tracking.tracking_uri(cfg)
        tcfg.tracking.experiment = cfg.tracking.experiment or str(cfg.run.id)
    get_ray(cfg.ray)
    parallel = _parallelism(cfg, [g[3] for g in grid])
    data_dirs = [data_dir_for(tcfg, out) for _, _, _, tcfg in grid]
    first, rest = _data_jobs(grid, data_dirs)
    log(f"experiment: {len(grid)} trials ({len(levels)} levels x {len(methods)} methods x {len(seeds)} seeds) "
        f"on {len(first) + len(rest)} data sets, {parallel} at a time; out: {out}")
    for jobs in (first, rest):
        _prepare(jobs, parallel)
    results = _run_trials(grid, data_dirs, out, parallel, parent.run_id)
    rows, failed = _write_trials(out, grid, results)
    if rows:
        _report(cfg, rows, levels, methods, out)
        log(f"experiment: {len(rows)} results from {len(grid) - len(failed)} trials; report: {out / 'report.html'}")
        tracking.log_experiment(parent, out)
    parent.finish("FAILED" if failed else "FINISHED")
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(grid)} trials failed (see {out / 'trials.json'}): "
                           + "; ".join(failed[:3]))
    return str(out)


def _checked_grid(cfg: Config) -> tuple[list, list, list, Path, list]:
    """(levels, methods, seeds, output directory, grid of (level, method, seed, trial config)), every
    trial's config validated before anything runs or is written."""
    exp = cfg.experiment
    levels = method_entries(exp.levels or [{"name": "base"}], "levels")
    methods = method_entries(exp.methods, "methods")
    seeds = [int(s) for s in exp.seeds]
    if not seeds:
        raise ConfigError("config key 'experiment.seeds' must list at least one seed")
    names = [m["name"] for m in methods] + [m["threshold_variant"] for m in methods if m["threshold_variant"]]
    if len(set(names)) != len(names):
        raise ConfigError("config key 'experiment.methods': method names (and threshold variants) must be unique")
    out = local_path(exp.out or Path(cfg.run.root) / f"experiment-{cfg.run.id}").resolve()
    grid = [(lv, m, s, trial_config(cfg, lv, m, s, out)) for lv in levels for m in methods for s in seeds]
    for lv, m, s, tcfg in grid:
        if m["threshold_variant"] and not tcfg.evaluate.threshold_moving:
            raise ConfigError(f"experiment method '{m['name']}' names threshold_variant "
                              f"'{m['threshold_variant']}' but sets no evaluate.threshold_moving")
        try:
            validate_config(tcfg, "experiment", warn=lambda w: None)
        except ConfigError as e:
            raise ConfigError(f"experiment trial {tcfg.run.id}: {e}") from None
    if exp.parallel is not None and (isinstance(exp.parallel, bool) or int(exp.parallel) < 1):
        raise ConfigError(f"config key 'experiment.parallel' must be >= 1, got {exp.parallel}")
    return levels, methods, seeds, out, grid


def _data_jobs(grid: list, data_dirs: list) -> tuple[list, list]:
    """The data-stage tasks, once per (level, seed): first one level of each shared split, then the
    other levels' protocols on it (never two tasks writing one stage)."""
    first, rest, seen = [], [], set()
    for (lv, m, s, tcfg), (dd, proto) in zip(grid, data_dirs):
        if (dd, proto) in seen:
            continue
        job = (tcfg.to_dict(), str(dd), proto, str(dd / f"prepare-{proto}.log"))
        (rest if any(j[1] == str(dd) for j in first) else first).append(job)
        seen.add((dd, proto))
    return first, rest


def _prepare(jobs: list, parallel: int) -> None:
    """Run data-stage tasks; a failed one fails the whole experiment (every trial of it would fail)."""
    def prepared(i, res):
        where = f"{Path(jobs[i][1]).name}/{jobs[i][2]}"
        if res.get("error"):
            raise (InputError if res["bad_input"] else RuntimeError)(
                f"experiment data {where}: {res['error']} (log: {jobs[i][3]})")
        log(f"experiment: data {where} ready")

    _run_tasks(_task_prepare, jobs, [1.0] * len(jobs), parallel, prepared)


def _run_trials(grid: list, data_dirs: list, out: Path, parallel: int, parent_run_id: str) -> dict[int, dict]:
    """Every trial as a Ray task, a console line as each ends, ``trials.json`` kept current."""
    results: dict[int, dict] = {}
    t0 = time.time()

    def finished(i, summary):
        lv, m, s, tcfg = grid[i]
        results[i] = summary
        tag = f"{lv['name']} / {m['name']} / seed {s}"
        if "error" in summary:
            log(f"experiment: trial {len(results)}/{len(grid)} FAILED ({tag}): {summary['error']} "
                f"(log: {out / 'trials' / tcfg.run.id / 'trial.log'})")
        else:
            log(f"experiment: trial {len(results)}/{len(grid)} done ({tag}): {_headline(summary, m)} "
                f"in {summary['wall_seconds']:.0f}s [{time.time() - t0:.0f}s elapsed]")
        _write_trials(out, grid, results)

    jobs = [(tcfg.to_dict(), str(dd), proto, str(out / "trials" / tcfg.run.id / "trial.log"),
             {"kind": "trial", "level": lv["name"], "rho": lv["rho"], "method": m["name"], "seed": s},
             parent_run_id)
            for (lv, m, s, tcfg), (dd, proto) in zip(grid, data_dirs)]
    _run_tasks(_task_trial, jobs, [_task_cpus(g[3]) for g in grid], parallel, finished)
    return results


def _headline(summary: dict, method: dict) -> str:
    """A finished trial's console figures: macro-F1 (threshold-moved when the method reports that),
    and PR AUC of the positive class on two-class data."""
    moved = summary.get("metrics_adjusted")
    head = moved if moved and not method["threshold_variant"] else summary["metrics"]
    text = f"macro-F1 {head['macro_f1']:.4f}"
    pr_auc = (summary.get("binary") or {}).get("pr_auc")
    return text + (f", PR AUC {pr_auc:.4f}" if pr_auc is not None else "")


def _report(cfg: Config, rows: list[dict], levels: list, methods: list, out: Path) -> None:
    """The statistics report over the finished trials, the first method as the reference."""
    # deferred: pandas is slow to import
    import pandas as pd

    # deferred: pandas is slow to import
    from pipeline.flows.experiment_stats import write_experiment_report

    trials = pd.DataFrame(rows)
    wanted = [m for m in (cfg.experiment.metrics or TRIAL_METRICS + BINARY_METRICS) if m in trials]
    metrics = [m for m in wanted if trials[m].notna().any()]
    # blocks are (level, seed): by ρ when every level has its own ρ, else by the level's name
    rhos = [str(lv["rho"]) for lv in levels]
    level_col = "level" if None not in [lv["rho"] for lv in levels] and len(set(rhos)) == len(rhos) \
        else "level_name"
    deltas = level_deltas(get_spark(cfg.spark), rows, methods[0]["name"], level_col,
                          _n_classes(rows), cfg.data.label_col)
    write_experiment_report(trials, out, metrics=metrics, by=("method", level_col),
                            title=f"Experiment {cfg.run.id}", deltas=deltas, reference=methods[0]["name"])


def _n_classes(rows: list[dict]) -> int:
    return int(read_json(Path(rows[0]["run_dir"]) / "evaluate" / "metrics.json")["n_classes"])


def _write_trials(out: Path, grid, results: dict) -> tuple[list[dict], list[str]]:
    rows, failed, records = [], [], []
    for i in sorted(results):
        lv, m, s, tcfg = grid[i]
        summary = results[i]
        if "error" in summary:
            failed.append(f"{tcfg.run.id}: {summary['error']}")
            records.append({"trial": tcfg.run.id, "method": m["name"], "level_name": lv["name"], "seed": s,
                            "error": summary["error"], "log": str(out / "trials" / tcfg.run.id / "trial.log")})
            continue
        rows.extend(_rows_from(summary, lv, m, s))
    write_json(out / "trials.json", rows + records)
    return rows, failed
