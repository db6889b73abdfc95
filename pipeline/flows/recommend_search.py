"""The training side of ``imbalance recommend``: trials as Ray Tune trials, cut by successive halving.

Every trial is :func:`pipeline.train.loop.run_training` in one Tune trial process (one CPU, plain
PyTorch), reading a training set the Spark sampler built before the search and the shared
validation split. It reports the validation metrics after every epoch with a checkpoint, so that:

* the search runs under Ray Tune's ``ASHAScheduler`` (asynchronous successive halving, Li et al.,
  "A system for massively parallel hyperparameter tuning", MLSys 2020, arXiv:1810.05934) on the
  validation metric, with ``training_iteration`` = epochs as the fidelity: every candidate trains
  ``grace`` epochs, and at each rung ``grace · η^k`` only about the best 1/η go on;
* a killed search resumes: ``Tuner.restore`` continues the unfinished trials from their last
  epoch's checkpoint (:func:`pipeline.train.loop.resume_training`) and keeps the finished ones;
* a trial that trains to the last epoch writes its model (best epoch's weights, as ``imbalance
  train`` does), so a search trial that ran at full fidelity is also one seed of its finalist.

The finalists' seeds run through the same trainable without a scheduler (:func:`run_trials`).
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from pipeline.config import config_from_dict
from pipeline.io import log
from pipeline.train.loop import run_training
from pipeline.train.trainer import write_model_artifact

MODEL_DIR = "model"
PHASE_FILE = "phase.txt"     # in a two-phase trial's checkpoint: "pretrain" or "finetune"


def trial_entry(name: str, cfg: dict, train_path: str, val_path: str, out_dir: str, epochs: int, *,
                pretrain: Optional[dict] = None) -> dict:
    """What one Tune trial needs: its candidate's name, its config and its data. ``pretrain``
    (two-phase learning): ``{"train_path", "epochs", "finetune_lr"}`` of the first phase, which
    trains before the ``epochs`` on ``train_path``; ``total`` counts both."""
    # deferred: torch is slow to import (the hook registry builds torch modules)
    from pipeline.train.hooks import hook_module

    total = int(epochs) + (int(pretrain["epochs"]) if pretrain else 0)
    return {"name": name, "cfg": cfg, "train_path": train_path, "val_path": val_path, "out_dir": out_dir,
            "epochs": int(epochs), "total": total, "pretrain": pretrain,
            "hook_module": hook_module(cfg["train"]["method"])}


def train_trial(config: dict) -> None:
    """Tune's function trainable: train one trial, report every epoch, write the model when it ends."""
    # deferred: ray is slow to import
    from ray import tune

    for name in ("ray.tune", "ray.train", "petastorm"):
        logging.getLogger(name).setLevel(logging.ERROR)
    t = config["trial"]
    resume_dir = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        resume_dir = tempfile.mkdtemp(prefix="imb-resume-")
        ckpt.to_directory(resume_dir)

    def report(metrics: dict, ckpt_dir: Optional[str]) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(ckpt_dir) if ckpt_dir else None)

    try:
        _train_and_write(t, report, resume_dir)
    finally:
        if resume_dir:
            shutil.rmtree(resume_dir, ignore_errors=True)


def finish_trial(entry: dict) -> str:
    """The model of a search trial that trained every epoch but was stopped at the last rung before
    it wrote one: finished from its last checkpoint (``entry["resume_from"]``), no epoch trained."""
    _train_and_write(entry, None, None)
    return str(Path(entry["out_dir"]) / MODEL_DIR)


def _train_and_write(t: dict, report: Optional[Callable], resume_dir: Optional[str]) -> None:
    """Train the trial ``t`` (from ``resume_dir``, else from ``t["resume_from"]`` when it has one),
    then write its model: the best epoch's weights, as ``imbalance train`` does. With ``pretrain``
    the first phase trains and writes its model under ``pretrain/`` first, and the second starts
    from it, as ``imbalance run`` does for two-phase learning; a checkpoint names its phase."""
    if t.get("hook_module"):  # a method registered outside pipeline.train (a user's own module)
        importlib.import_module(t["hook_module"])
    cfg = config_from_dict(t["cfg"])
    copied = None
    if resume_dir is None and t.get("resume_from"):   # a finalist's first seed continues its search trial
        resume_dir = copied = tempfile.mkdtemp(prefix="imb-resume-")
        shutil.copytree(t["resume_from"], copied, dirs_exist_ok=True)
    out, pre, init = Path(t["out_dir"]), t.get("pretrain"), None
    try:
        if pre:
            tag = Path(resume_dir or "") / PHASE_FILE
            if not (resume_dir and tag.is_file() and tag.read_text() == "finetune"):
                _train_phase(cfg, pre["train_path"], t["val_path"], out / "pretrain", report=report,
                             resume_dir=resume_dir, epochs=pre["epochs"], phase="pretrain")
                resume_dir = None                       # the second phase starts from the first's model
                init = str(out / "pretrain" / MODEL_DIR)
                cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=init))
            if pre.get("finetune_lr") is not None:
                cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=float(pre["finetune_lr"])))
        _train_phase(cfg, t["train_path"], t["val_path"], out, report=report, resume_dir=resume_dir,
                     epochs=t["epochs"], phase="finetune" if pre else None, init_from=init)
    finally:
        if copied:
            shutil.rmtree(copied, ignore_errors=True)


def _train_phase(cfg, train_path: str, val_path: str, out: Path, *, report: Optional[Callable],
                 resume_dir: Optional[str], epochs: int, phase: Optional[str], init_from: Optional[str] = None):
    """One :func:`run_training` (its checkpoints tagged with ``phase``), then its model under ``out``."""
    def tagged(metrics: dict, ckpt_dir: Optional[str]) -> None:
        if ckpt_dir and phase:
            (Path(ckpt_dir) / PHASE_FILE).write_text(phase)
        report(metrics, ckpt_dir)

    r = run_training(cfg, train_path, val_path, str(out), report_fn=tagged if report else None,
                     resume_dir=resume_dir, epochs=epochs, init_from=init_from)
    summary = {k: r[k] for k in ("best_epoch", "best_metrics", "history", "epochs_run", "stopped_early",
                                 "select_metric")}
    write_model_artifact(out / MODEL_DIR, cfg, train_path, val_path, r["best_state"], summary,
                         centroids=r.get("centroids"), method_inference=r.get("method_inference"))


class RungLines:
    """A Tune callback: one console line when every live trial has reached a rung (or ended)."""

    def __new__(cls, *args, **kwargs):
        # deferred: ray is slow to import
        from ray.tune import Callback

        class _RungLines(Callback):
            def __init__(self, names: dict, rungs: list[int], metric: str, t0: float):
                self.names, self.rungs, self.metric, self.t0 = names, rungs, metric, t0
                self.reached: dict = {}
                self.ended: set = set()
                self.best: dict = {}
                self.printed: set = set()

            def on_trial_result(self, iteration, trials, trial, result, **info):
                it = int(result.get("training_iteration", 0))
                self.reached[trial.trial_id] = it
                value = result.get(self.metric)
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    for r in self.rungs:
                        if it == r and (r not in self.best or value > self.best[r][1]):
                            self.best[r] = (self._name(trial), float(value))
                self._lines(trials)

            def on_trial_complete(self, iteration, trials, trial, **info):
                self.ended.add(trial.trial_id)
                self._lines(trials)

            def on_trial_error(self, iteration, trials, trial, **info):
                self.on_trial_complete(iteration, trials, trial)

            def _name(self, trial) -> str:
                return self.names.get(trial.config["trial"]["out_dir"], trial.trial_id)

            def _lines(self, trials) -> None:
                for k, r in enumerate(self.rungs):
                    if r in self.printed or r not in self.best:
                        continue
                    if len(trials) == len(self.names) and all(
                            self.reached.get(t.trial_id, 0) >= r or t.trial_id in self.ended for t in trials):
                        went = sum(self.reached.get(t.trial_id, 0) >= r for t in trials)
                        name, value = self.best[r]
                        log(f"recommend: rung {k + 1}/{len(self.rungs)} ({r} epochs): {went} of {len(trials)} "
                            f"trials reached it; best {name} {self.metric} {value:.4f} "
                            f"[{time.time() - self.t0:.0f}s]")
                        self.printed.add(r)

        return _RungLines(*args, **kwargs)


class EpochBudget:
    """A Tune stopper that keeps the search, and the finalists after it, within ``budget`` epochs.

    After every result it projects the whole run's cost: the epochs trained so far, ``grace``
    for every candidate not started yet, the epochs the current finalists (the top ``keep``
    candidates by how far they got and the baseline) still lack, and the finalists' other
    ``seeds - 1`` seeds. A trial that has had its ``grace`` epochs and is not a current finalist is
    stopped when one more epoch of it would take that projection past ``budget``; every candidate
    still gets its first rung. Under asynchronous halving a finalist may later be overtaken, so the
    epochs it trained beyond its rung can take the total a few epochs past ``budget``.
    """

    def __init__(self, names: list[str], budget: int, *, epochs, rungs: list[int], keep: int, seeds: int,
                 baseline: str, metric: str):
        self.names, self.budget, self.rungs = list(names), int(budget), [int(r) for r in rungs]
        self.grace = self.rungs[0]
        # a candidate's full-fidelity epochs (two-phase learning: both phases)
        self.epochs = {n: int(epochs[n] if isinstance(epochs, dict) else epochs) for n in self.names}
        self.keep, self.seeds, self.baseline, self.metric = int(keep), int(seeds), baseline, metric
        self.reached: dict = {}     # name -> (epochs, metric at the last of them)

    def __call__(self, trial_id: str, result: dict) -> bool:
        name = result["config"]["trial"]["name"]
        value = result.get(self.metric)
        self.reached[name] = (int(result.get("training_iteration", 0)),
                              float(value) if value is not None and value == value else float("-inf"))
        if self.reached[name][0] < self.grace or name in self.finalists():
            return False
        return self.projected() + 1 > self.budget    # its next epoch would not fit

    def finalists(self) -> list[str]:
        order = sorted((n for n in self.reached if n != self.baseline),
                       key=lambda n: standing(*self.reached[n], self.rungs), reverse=True)
        return order[:self.keep] + [self.baseline]

    def projected(self) -> int:
        spent = sum(e for e, _ in self.reached.values())
        unstarted = sum(n not in self.reached for n in self.names) * self.grace
        final = self.finalists()
        missing = sum(self.epochs[n] - self.reached.get(n, (0,))[0] for n in final)
        return spent + unstarted + missing + (self.seeds - 1) * sum(self.epochs[n] for n in final)


def standing(epochs: int, value: float, rungs: list[int]) -> tuple:
    """How far a trial got, for picking finalists: the rungs it reached, then its metric at its last
    epoch (epochs past the last rung count as that rung: a two-phase trial's longer run is no lead)."""
    return sum(int(epochs) >= r for r in rungs), value


def _as_stopper(budget: EpochBudget):
    """``budget`` as a ``ray.tune.Stopper`` (Tune takes only its own subclass for a stateful stopper)."""
    # deferred: ray is slow to import
    from ray.tune import Stopper

    class _Budget(Stopper):
        def __call__(self, trial_id: str, result: dict) -> bool:
            return budget(trial_id, result)

        def stop_all(self) -> bool:
            return False

    return _Budget()


def _tuner(storage: Path, name: str, entries: list[dict], tune_config, callbacks: list, stop=None):
    """A new Tuner over ``entries``, or the one a killed run left in ``storage/name`` (restored)."""
    # deferred: ray is slow to import
    from ray import tune

    path = storage / name
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")   # with verbose=0: no Tune tables on the console
    trainable = tune.with_resources(train_trial, {"cpu": 1})
    if tune.Tuner.can_restore(str(path)):
        log(f"recommend: resuming the {name} in {path}")
        return tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True,
                                  param_space={"trial": tune.grid_search(entries)})
    run_config = tune.RunConfig(storage_path=str(storage), name=name, verbose=0, callbacks=callbacks, stop=stop,
                                checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
    return tune.Tuner(trainable, param_space={"trial": tune.grid_search(entries)}, tune_config=tune_config,
                      run_config=run_config)


def run_search(entries: list[dict], storage: Path, metric: str, rungs: list[int], reduction_factor: int,
               parallel: int, *, time_budget_s: Optional[float] = None, stopper: Optional[EpochBudget] = None
               ) -> list[dict]:
    """Successive halving over ``entries`` (ASHA on ``metric``, maximised), within ``stopper``'s epoch
    budget and ``time_budget_s``; every trial's record."""
    # deferred: ray is slow to import
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    names = {e["out_dir"]: e["name"] for e in entries}
    # max_t one past the last epoch: a trial that survives every rung ends by itself and writes its model
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max(e["total"] for e in entries) + 1,
                              grace_period=rungs[0], reduction_factor=reduction_factor)
    tune_config = tune.TuneConfig(metric=metric, mode="max", scheduler=scheduler, max_concurrent_trials=parallel,
                                  time_budget_s=time_budget_s, trial_dirname_creator=_dirname)
    tuner = _tuner(storage, "search", entries, tune_config, [RungLines(names, rungs, metric, time.time())],
                   stop=_as_stopper(stopper) if stopper is not None else None)
    return _records(tuner.fit(), metric)


def run_trials(entries: list[dict], storage: Path, name: str, metric: str, parallel: int) -> list[dict]:
    """Every entry trained to its last epoch (no scheduler); every trial's record."""
    # deferred: ray is slow to import
    from ray import tune

    tune_config = tune.TuneConfig(metric=metric, mode="max", max_concurrent_trials=parallel,
                                  trial_dirname_creator=_dirname)
    return _records(_tuner(storage, name, entries, tune_config, []).fit(), metric)


def _dirname(trial) -> str:
    """A trial's directory under the Tune experiment: its candidate and Tune's trial id."""
    return f"{trial.config['trial']['name']}-{trial.trial_id}"


def _records(results, metric: str) -> list[dict]:
    """Per trial: name, output directory, the metric per epoch, epochs run, and how it ended."""
    out = []
    for r in results:
        t = r.config["trial"]
        df = r.metrics_dataframe
        history = []
        if df is not None and metric in df:
            history = [{"epoch": int(e), "value": None if v is None or v != v else float(v)}
                       for e, v in zip(df["training_iteration"], df[metric])]
        epochs = history[-1]["epoch"] if history else 0
        model = Path(t["out_dir"]) / MODEL_DIR
        status = "ERROR" if r.error else ("TERMINATED" if (model / "model.json").is_file() else "STOPPED")
        out.append({"name": t["name"], "out_dir": t["out_dir"], "history": history, "epochs": epochs,
                    "max_epochs": t.get("total", t["epochs"]), "status": status, "stopped": status == "STOPPED",
                    "error": _first_line(r.error) if r.error else None,
                    "model_dir": str(model) if status == "TERMINATED" else None,
                    "checkpoint": r.checkpoint.path if r.checkpoint is not None and not r.error else None})
    return out


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"[:500]


def rungs_for(epochs: int, grace: int, reduction_factor: int) -> list[int]:
    """The rungs' epochs: grace, grace·η, grace·η², … below ``epochs``, then ``epochs``."""
    rungs, r = [], max(1, int(grace))
    while r < epochs:
        rungs.append(r)
        r *= max(2, int(reduction_factor))
    return rungs + [int(epochs)]


def default_grace(epochs: int, reduction_factor: int) -> int:
    """About ``epochs / η²`` (three rungs), at least one epoch."""
    return max(1, int(epochs) // max(2, int(reduction_factor)) ** 2)


def epochs_of(records: list[dict]) -> int:
    """Training epochs the trials ran (the budget they used)."""
    return sum(int(r["epochs"]) for r in records)


__all__ = ["EpochBudget", "standing", "trial_entry", "train_trial", "finish_trial", "run_search", "run_trials",
           "rungs_for",
           "default_grace", "epochs_of",
           "MODEL_DIR"]
