"""``imbalance recommend``: which imbalance method for this data, within a budget, and how sure.

The steps, each resumable (a killed ``recommend`` rerun with the same config continues):

1. **Data, once.** The data stages (source, profile, split) run once into ``<out>/data``; every
   candidate's training set is built once by the Spark sampler into ``<out>/sets/<key>/``
   (candidates with the same ``sample`` section share it).
2. **Candidates.** ``recommend.methods: auto`` takes the survey's methods that apply to the
   training split's class counts (:mod:`pipeline.flows.recommend_space`); a list shaped like
   ``experiment.methods`` names them instead. The baseline is always one.
3. **Search.** Successive halving on Ray Tune (:mod:`pipeline.flows.recommend_search`): every
   candidate trains ``grace`` epochs with the first seed, and at each rung only about one in
   ``reduction_factor`` goes on, by its validation metric, up to ``train.epochs``.
4. **Finalists.** The best ``finalists`` candidates of the search and the baseline are trained at
   full fidelity with every seed of ``recommend.seeds`` (a search trial that reached the last
   epoch is its candidate's first seed). Each model predicts the **validation** split.
5. **Decision.** Every finalist, and each finalist with threshold moving by priors, is compared on
   the same validation rows with the two-level bootstrap (:mod:`pipeline.evaluation.best_of`):
   its score, 95% interval and ``p_best``, and the gain of the best over the baseline. The test
   split is never read: it stays for the user's own final check of the recommended config.

Outputs in ``recommend.out``: ``recommendation.json``, ``recommended.yaml`` (the input config
with the winner's overrides, runnable by ``imbalance run``), ``report.html`` and ``search.json``.
MLflow holds a parent run with a nested run per trial.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Optional

import yaml

from pipeline.config import Config, SampleSection, config_from_dict, merge_overrides
from pipeline.data.schema import positive_class, read_info
from pipeline.engines import get_ray, get_spark
from pipeline.errors import ConfigError
from pipeline.evaluation.best_of import METRICS, TUNE_FOR, compare_methods
from pipeline.evaluation.best_of_ranking import ranking_metric
from pipeline.flows import tracking
from pipeline.flows.experiment import method_entries
from pipeline.flows.recommend_report import write_recommend_report
from pipeline.flows.recommend_search import (
    EpochBudget, default_grace, epochs_of, finish_trial, rungs_for, run_search, run_trials, standing, trial_entry)
from pipeline.flows.recommend_space import auto_candidates
from pipeline.flows.run import StageRunner, prepare_data, training_set
from pipeline.flows.validate import pretrain_section, two_phase_settings, validate_config
from pipeline.io import fingerprint, local_path, log, read_json, write_json, write_text
from pipeline.train.predict import predict

BASELINE = "baseline"
PRIOR_SUFFIX = "+prior"
TUNED_SUFFIX = "+tuned"
#: a config's method that the search replaces with a one-stage baseline (two-phase learning is a candidate of its own)
SINGLE_STAGE = {"two_phase": {"train.method": "baseline", "train.method_params": {}}}


def _checked(cfg: Config) -> tuple[str, list[int], Path]:
    """(metric, seeds, output directory) of the ``recommend`` section, every rule checked."""
    rc = cfg.recommend
    if rc.metric not in METRICS and ranking_metric(rc.metric) is None:
        raise ConfigError(f"config key 'recommend.metric': unknown metric '{rc.metric}' (choose: {', '.join(METRICS)}; "
                          f"two-class data also: pr_auc, roc_auc, binary.recall_at_precision.<p>, "
                          f"binary.precision_at_recall.<r>, binary.precision_at_k.<fraction>)")
    seeds = [int(s) for s in rc.seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError("config key 'recommend.seeds' must list at least one seed, each once")
    for key, value, low in (("finalists", rc.finalists, 1), ("reduction_factor", rc.reduction_factor, 2),
                            ("budget", rc.budget, 1), ("grace_epochs", rc.grace_epochs, 1),
                            ("parallel", rc.parallel, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ConfigError(f"config key 'recommend.{key}' must be an integer >= {low}, got {value!r}")
    if rc.budget_minutes is not None and (isinstance(rc.budget_minutes, bool) or rc.budget_minutes <= 0):
        raise ConfigError(f"config key 'recommend.budget_minutes' must be > 0, got {rc.budget_minutes!r}")
    if rc.methods != "auto" and not isinstance(rc.methods, list):
        raise ConfigError("config key 'recommend.methods' must be 'auto' or a list shaped like experiment.methods")
    if rc.methods != "auto":
        _given(rc.methods)
    out = local_path(rc.out or Path(cfg.run.root) / f"recommend-{cfg.run.id}").resolve()
    return rc.metric, seeds, out


def _candidates(cfg: Config, counts: list[int]) -> list[dict]:
    """The candidates, the baseline first (added when a given list lacks it)."""
    if cfg.recommend.methods == "auto":
        return auto_candidates(counts, cfg.train.epochs)
    given = _given(cfg.recommend.methods)
    if BASELINE not in [m["name"] for m in given]:
        given.insert(0, {"name": BASELINE, "overrides": {}, "family": "baseline"})
    return sorted(given, key=lambda m: m["name"] != BASELINE)


def epoch_metric(metric: str) -> str:
    """The validation metric training reports per epoch, which the search cuts on and which picks a
    model's best epoch: the recommend metric itself, or PR AUC for the ``binary.*`` metrics."""
    return metric if metric in METRICS + ("pr_auc", "roc_auc") else "pr_auc"


def _given(raw: list) -> list[dict]:
    """The candidates a ``recommend.methods`` list names, checked: ``{name, overrides}`` each, the
    names unique and free of the suffixes the free variants take."""
    given = [{"name": m["name"], "overrides": m["overrides"], "family": "given"}
             for m in method_entries(raw, "methods", section="recommend", keys=("name", "overrides"))]
    if len({m["name"] for m in given}) != len(given):
        raise ConfigError("config key 'recommend.methods': method names must be unique")
    for m in given:
        if m["name"].endswith((PRIOR_SUFFIX, TUNED_SUFFIX)):
            raise ConfigError(f"config key 'recommend.methods': '{m['name']}' ends in {PRIOR_SUFFIX} or "
                              f"{TUNED_SUFFIX}, which name the threshold-moving variants recommend adds itself")
    return given


def candidate_config(base: Config, overrides: dict, seed: int, metric: str) -> Config:
    """The config a candidate trains with: the base, its overrides, the training seed, and the
    recommend metric's :func:`epoch_metric` picking its best epoch."""
    data = copy.deepcopy(base.to_dict())
    for section in ("experiment", "recommend"):
        data.pop(section, None)
    merge_overrides(data, [f"{k}={_yaml(v)}" for k, v in overrides.items()])
    data["train"].update(seed=int(seed), select_metric=epoch_metric(metric), progress=False)
    return config_from_dict(data)


def _yaml(v) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def _training_sets(spark, cfg: Config, cands: list[dict], data: dict, out: Path) -> dict:
    """Each candidate's materialized training set and its priors (and a two-phase candidate's
    pre-training set), built once per sample section."""
    sets: dict = {}

    def built(ccfg: Config, section: SampleSection) -> dict:
        key = fingerprint({"split": data["split_fp"], "sample": dataclasses.asdict(section),
                           "row_group_mb": ccfg.stream.row_group_mb})[:10]
        if key not in sets:
            runner = StageRunner(out / "sets" / key)
            path, _ = training_set(spark, ccfg, runner, "sample", section, train_split=data["train"],
                                   split_fp=data["split_fp"])
            sets[key] = {"path": path, "priors": _unique_counts(out / "sets" / key, path)}
        return sets[key]

    for c in cands:
        ccfg = c["config"]
        c["set"] = built(ccfg, SampleSection(**ccfg.section("sample")))
        if ccfg.train.method == "two_phase":
            c["pretrain_set"] = built(ccfg, pretrain_section((ccfg.train.method_params or {}).get("pretrain")))
    return sets


def _pretrain(c: dict) -> Optional[dict]:
    """A two-phase candidate's first phase for :func:`trial_entry` (None for any other)."""
    if "pretrain_set" not in c:
        return None
    two = two_phase_settings(c["config"].train)
    return {"train_path": c["pretrain_set"]["path"], "epochs": two.epochs, "finetune_lr": two.finetune_lr}


def total_epochs(c: dict) -> int:
    """A candidate's epochs at full fidelity: ``train.epochs``, plus the first phase's for two-phase learning."""
    pre = _pretrain(c)
    return c["config"].train.epochs + (pre["epochs"] if pre else 0)


def _unique_counts(set_dir: Path, path: str) -> list[int]:
    """Class counts for threshold moving by priors: unique training examples per class (as the run's)."""
    m = read_json(set_dir / "sample" / "manifest.json")
    n = read_info(path).n_classes
    return [min(int(m["input_counts"].get(str(i), 0)), int(m["achieved"].get(str(i), 0))) for i in range(n)]


def budget_plan(epochs: list[int], grace: int, finalists: int, seeds: int, asked: Optional[int]) -> dict:
    """The epoch budget: what a full grid of the candidates × seeds costs, the least a search can
    spend (every candidate's first rung, then the finalists and the baseline at full fidelity with
    every seed), and the budget itself: ``asked``, or by default a third of the grid (the least, when
    that is more). ``epochs``: each candidate's full-fidelity epochs, the baseline's first (the
    least counts the baseline and the candidates with the fewest as the finalists)."""
    n_candidates = len(epochs)
    keep = min(finalists, n_candidates - 1)
    grid = seeds * sum(epochs)
    least = (n_candidates - keep - 1) * grace + seeds * (epochs[0] + sum(sorted(epochs[1:])[:keep]))
    if asked is not None and asked < least:
        raise ConfigError(f"config key 'recommend.budget': {asked} epochs cannot give {n_candidates} candidates "
                          f"their first {grace} epochs and train {keep + 1} finalists (the baseline included) "
                          f"at full fidelity with {seeds} seeds: it needs at least {least}")
    return {"asked": asked, "budget": asked if asked is not None else max(grid // 3, least), "grid": grid,
            "least": least, "keep": keep}


def _search(cfg: Config, cands: list[dict], data: dict, out: Path, seeds: list[int], parallel: int) -> dict:
    """The successive-halving search (or the finished one ``search.json`` holds); its record."""
    rc, epochs, seed = cfg.recommend, cfg.train.epochs, seeds[0]
    grace = rc.grace_epochs or default_grace(epochs, rc.reduction_factor)
    rungs = rungs_for(epochs, grace, rc.reduction_factor)
    plan = budget_plan([total_epochs(c) for c in cands], rungs[0], rc.finalists, len(seeds), rc.budget)
    entries = [trial_entry(c["name"], c["config"].to_dict(), c["set"]["path"], data["val"],
                           str(out / "search" / c["name"]), epochs, pretrain=_pretrain(c)) for c in cands]
    key = fingerprint(entries, rungs, rc.reduction_factor, plan, rc.budget_minutes)
    path = out / "search.json"
    if path.is_file() and read_json(path).get("key") == key:
        log(f"recommend: search up to date ({path})")
        return read_json(path)
    log(f"recommend: searching {len(cands)} candidates, rungs at {rungs} epochs, {parallel} at a time, within "
        f"{plan['budget']} epochs in all (a full grid: {plan['grid']})")
    t0 = time.time()
    per_epoch = f"val_{epoch_metric(rc.metric)}"
    stopper = EpochBudget([c["name"] for c in cands], plan["budget"], rungs=rungs, keep=plan["keep"],
                          epochs={c["name"]: total_epochs(c) for c in cands}, seeds=len(seeds), baseline=BASELINE,
                          metric=per_epoch)
    records = run_search(entries, out / "tune" / f"search-{key[:10]}", per_epoch, rungs, rc.reduction_factor, parallel,
                         time_budget_s=rc.budget_minutes * 60 if rc.budget_minutes else None, stopper=stopper)
    result = {"key": key, "metric": per_epoch, "max_epochs": epochs, "grace_epochs": rungs[0],
              "reduction_factor": rc.reduction_factor, "rungs": rungs, "seed": seed, "plan": plan,
              "seconds": round(time.time() - t0, 1), "epochs": epochs_of(records), "trials": records}
    write_json(path, result)
    return result


def _ranked(search: dict) -> list[str]:
    """Candidates by the rungs they reached, then by their metric at the last epoch they reached."""
    def last(r):   # as the search's budget stopper ranks them
        value = r["history"][-1]["value"] if r["history"] else None
        return standing(r["epochs"], value if value is not None else float("-inf"), search["rungs"])

    ok = [r for r in search["trials"] if r["status"] != "ERROR"]
    return [r["name"] for r in sorted(ok, key=last, reverse=True)]


def _finalists(cfg: Config, cands: list[dict], search: dict, data: dict, out: Path, *, seeds: list[int],
               parallel: int) -> dict:
    """Every finalist's model directory per seed, training the seeds the search did not (a finalist's
    search trial that stopped early goes on from its last checkpoint as its first seed)."""
    rc = cfg.recommend
    names = [n for n in _ranked(search) if n != BASELINE][:rc.finalists] + [BASELINE]
    by_name = {c["name"]: c for c in cands}
    done = {r["name"]: r["model_dir"] for r in search["trials"] if r["model_dir"]}
    started = {r["name"]: r for r in search["trials"] if not r["model_dir"] and r.get("checkpoint")}
    models: dict = {n: {} for n in names}
    entries = []
    for n in names:
        for s in seeds:
            if s == search["seed"] and n in done:
                models[n][s] = done[n]
                continue
            d = out / "finalists" / f"{n}__s{s}"
            entry = trial_entry(n, candidate_config(by_name[n]["config"], {}, s, rc.metric).to_dict(),
                                by_name[n]["set"]["path"], data["val"], str(d), cfg.train.epochs,
                                pretrain=_pretrain(by_name[n]))
            models[n][s] = str(d / "model")
            if s == search["seed"] and n in started:
                entry["resume_from"] = started[n]["checkpoint"]
                if started[n]["epochs"] >= entry["total"]:    # stopped at the last rung, before its model
                    if not (d / "model" / "model.json").is_file():
                        finish_trial(entry)
                    continue
            entries.append(entry)
    log(f"recommend: finalists {', '.join(names)}: {len(entries)} trainings ({len(seeds)} seeds each)")
    name = f"finalists-{fingerprint(entries)[:10]}"   # another set of finalists is another Tune experiment
    records = run_trials(entries, out / "tune", name, f"val_{epoch_metric(rc.metric)}", parallel) if entries else []
    failed = [r for r in records if r["status"] != "TERMINATED"]
    if failed:
        raise RuntimeError(f"recommend: {len(failed)} finalist trainings failed, e.g. {failed[0]['name']}: "
                           f"{failed[0]['error']} (logs: {out / 'tune' / 'finalists'})")
    return {"names": names, "models": models, "epochs": epochs_of(records), "trials": records}


def _predict_val(spark, cfg: Config, finals: dict, data: dict, out: Path) -> dict:
    """Each finalist model's predictions of the validation split (written once)."""
    tables: dict = {}
    for n, per_seed in finals["models"].items():
        tables[n] = []
        for s, model_dir in per_seed.items():
            p = out / "predictions" / f"{n}__s{s}"
            key = fingerprint(read_json(Path(model_dir) / "model.json").get("created"), data["val"])
            if not (p / "_SUCCESS").is_file() or read_json(out / "predictions" / f"{p.name}.json").get("key") != key:
                predict(spark, model_dir, data["val"], str(p), batch_size=cfg.predict.batch_size)
                write_json(out / "predictions" / f"{p.name}.json", {"key": key, "model": model_dir})
            tables[n].append(str(p))
    return tables


def _decide(spark, cfg: Config, cands: list[dict], tables: dict, info) -> dict:
    """The two-level bootstrap over the finalists and their free variants: threshold moving by
    priors, and on two-class data a threshold tuned on validation (cross-fitted). A ranking
    metric is the same with and without them, so it compares the finalists alone."""
    by_name = {c["name"]: c for c in cands}
    metric = cfg.recommend.metric
    positive = None
    if info.n_classes == 2:
        positive = positive_class(info.labels, [int((info.class_counts or {}).get(str(i), 0)) for i in range(2)])
    ranking = ranking_metric(metric) is not None
    if ranking and positive is None:
        raise ConfigError(f"config key 'recommend.metric': '{metric}' needs two-class data; this data has "
                          f"{info.n_classes} classes")
    methods = {}
    for n, paths in tables.items():
        methods[n] = {"tables": paths}
        if not ranking:
            methods[n + PRIOR_SUFFIX] = {"tables": paths, "priors": by_name[n]["set"]["priors"]}
        if not ranking and positive is not None:
            methods[n + TUNED_SUFFIX] = {"tables": paths, "tuned": (positive, TUNE_FOR[metric])}
    return compare_methods(spark, methods, BASELINE, metric, info.n_classes, seed=cfg.recommend.seeds[0],
                           label_col=cfg.data.label_col, positive=positive)


def _base(name: str) -> str:
    """The trained candidate behind a name, without its threshold-moving variant's suffix."""
    return name.removesuffix(PRIOR_SUFFIX).removesuffix(TUNED_SUFFIX)


def _overrides_of(name: str, cands: list[dict], metric: str) -> dict:
    ov = dict(next(c for c in cands if c["name"] == _base(name))["overrides"])
    if name.endswith(PRIOR_SUFFIX):
        ov["evaluate.threshold_moving"] = "prior"
    if name.endswith(TUNED_SUFFIX):
        ov.update({"evaluate.threshold_moving": "tuned", "evaluate.tune_metric": TUNE_FOR[metric]})
    return ov


def _recommendation(cfg: Config, cands: list[dict], search: dict, finals: dict, decision: dict, *,
                    seeds: list[int], seconds: dict) -> dict:
    """``recommendation.json``'s content."""
    rc, m = cfg.recommend, decision["methods"]
    best = decision["best"] if decision["confident"] else BASELINE
    used = search["epochs"] + finals["epochs"]
    grid = search["plan"]["grid"]
    message = (f"{best} beats the baseline on validation {rc.metric} with 95% confidence."
               if decision["confident"] else
               f"No method beats the baseline with 95% confidence on this data (the highest scoring was "
               f"{decision['best']}); the baseline is recommended.")
    by_name = {c["name"]: c for c in cands}
    return {
        "metric": rc.metric, "split": "val", "test_split_read": False,
        "note": "models were compared on the validation split only; the test split was never read",
        "best": {"name": best, "overrides": _overrides_of(best, cands, rc.metric)},
        "highest_scoring": decision["best"],
        "candidates": [{"name": n, "overrides": _overrides_of(n, cands, rc.metric), "score": v["score"], "ci": v["ci"],
                        "p_best": v["p_best"],
                        "fidelity": {"epochs": total_epochs(by_name[_base(n)]), "seeds": len(seeds)},
                        "models": [finals["models"][_base(n)][s] for s in seeds]}
                       for n, v in sorted(m.items(), key=lambda kv: -kv[1]["score"])],
        "baseline": {"name": BASELINE, "score": m[BASELINE]["score"], "ci": m[BASELINE]["ci"]},
        "gain": decision["gain"], "confident": decision["confident"], "message": message,
        "searched": [c["name"] for c in cands],
        "budget": {"unit": "epochs", "asked": search["plan"]["budget"], "given": rc.budget, "used": used,
                   "search": search["epochs"], "finalists": finals["epochs"], "grid": grid,
                   "least": search["plan"]["least"], "minutes_asked": rc.budget_minutes},
        "bootstrap": {"replicates": decision["replicates"], "rows": decision["rows"], "seeds": seeds,
                      "covers": "training seeds and validation rows"},
        "seconds": seconds,
    }


def _write_outputs(cfg: Config, out: Path, rec: dict, search: dict) -> None:
    write_json(out / "recommendation.json", rec)
    data = copy.deepcopy(cfg.to_dict())
    data.pop("recommend", None)
    merge_overrides(data, [f"{k}={_yaml(v)}" for k, v in rec["best"]["overrides"].items()])
    header = (f"# imbalance recommend: {rec['best']['name']} ({rec['message']})\n"
              f"# run it with: imbalance run {out / 'recommended.yaml'}\n")
    write_text(out / "recommended.yaml", header + yaml.safe_dump(data, sort_keys=False))
    write_recommend_report(rec, search, out / "report.html")


def _log_trials(parent, cfg: Config, records: list[dict], phase: str) -> None:
    """A nested MLflow run per trial: its validation metric per epoch and how it ended."""
    for r in records:
        tcfg = candidate_config(cfg, {}, 0, cfg.recommend.metric)
        tcfg.run.id = f"{phase}-{Path(r['out_dir']).name}"
        tr = tracking.start(tcfg, Path(r["out_dir"]), {"kind": f"recommend-{phase}", "candidate": r["name"],
                                                       "status": r["status"]}, parent.run_id)
        key = f"val_{epoch_metric(cfg.recommend.metric)}"
        tr.part("history", lambda: [tracking.log_metrics(tr, {key: h["value"]}, step=h["epoch"])
                                    for h in r["history"] if h["value"] is not None])
        tr.finish("FINISHED" if r["status"] != "ERROR" else "FAILED")


def run_recommend(cfg: Config) -> str:
    """Search, retrain the finalists, decide; write the outputs and return their directory."""
    metric, seeds, out = _checked(cfg)
    validate_config(candidate_config(cfg, {}, seeds[0], metric), "run", warn=lambda w: None)
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    parent = tracking.start(cfg, out, tags={"kind": "recommend"})
    tracking.log_config(parent, cfg)
    cfg.tracking.uri, cfg.tracking.experiment = tracking.tracking_uri(cfg), cfg.tracking.experiment or str(cfg.run.id)
    try:
        rec, search = _recommend(cfg, metric, seeds, out, parent, t0)
    except BaseException as e:
        parent.fail(e)
        raise
    parent.part("recommendation", lambda: tracking.log_metrics(
        parent, {"gain": rec["gain"]["mean"], "confident": float(rec["confident"]),
                 "budget_used_epochs": rec["budget"]["used"]}))
    parent.finish()
    log(f"recommend: {rec['message']} Best: {rec['best']['name']}; gain {rec['gain']['mean']:+.4f} "
        f"[{rec['gain']['ci'][0]:+.4f}, {rec['gain']['ci'][1]:+.4f}]; {rec['budget']['used']} epochs "
        f"(a full grid: {rec['budget']['grid']}); report: {out / 'report.html'}")
    return str(out)


def _recommend(cfg: Config, metric: str, seeds: list[int], out: Path, parent, t0: float) -> tuple[dict, dict]:
    spark = get_spark(cfg.spark)
    get_ray(cfg.ray)
    data = prepare_data(cfg, str(out / "data"))
    info = read_info(data["train"])
    counts = [int((info.class_counts or {}).get(str(i), 0)) for i in range(info.n_classes)]
    cands = _candidates(cfg, counts)
    if cfg.train.method in SINGLE_STAGE:
        log("recommend: the config trains with two-phase learning; the methods are compared with a one-stage "
            "baseline (train.method: baseline), and two-phase learning is a candidate of its own")
        for c in cands:
            c["overrides"] = {**SINGLE_STAGE[cfg.train.method], **c["overrides"]}
    for c in cands:
        c["config"] = candidate_config(cfg, c["overrides"], seeds[0], metric)
        try:
            validate_config(c["config"], "run", warn=lambda w: None)
        except ConfigError as e:
            raise ConfigError(f"recommend candidate {c['name']}: {e}") from None
    same = [c["name"] for c in cands[1:] if c["config"].to_dict() == cands[0]["config"].to_dict()]
    if same:   # e.g. `rus` when the config already undersamples: the baseline is that candidate
        log(f"recommend: {', '.join(same)} would train the baseline's config; left out")
        cands = [c for c in cands if c["name"] not in same]
    _training_sets(spark, cfg, cands, data, out)
    parallel = _parallel(cfg)
    search = _search(cfg, cands, data, out, seeds, parallel)
    _log_trials(parent, cfg, search["trials"], "search")
    t_search = time.time()
    finals = _finalists(cfg, cands, search, data, out, seeds=seeds, parallel=parallel)
    _log_trials(parent, cfg, finals["trials"], "finalist")
    t_final = time.time()
    tables = _predict_val(spark, cfg, finals, data, out)
    decision = _decide(spark, cfg, cands, tables, info)
    seconds = {"search": search["seconds"], "finalists": round(t_final - t_search, 1),
               "compare": round(time.time() - t_final, 1), "total": round(time.time() - t0, 1)}
    rec = _recommendation(cfg, cands, search, finals, decision, seeds=seeds, seconds=seconds)
    _write_outputs(cfg, out, rec, search)
    return rec, search


def _parallel(cfg: Config) -> int:
    """Trials at once: ``recommend.parallel``, default one per Ray CPU."""
    # deferred: ray is slow to import
    import ray

    return int(cfg.recommend.parallel or max(1, int(ray.cluster_resources().get("CPU", 1))))


__all__ = ["run_recommend", "candidate_config", "budget_plan", "epoch_metric", "BASELINE", "PRIOR_SUFFIX",
           "TUNED_SUFFIX"]
