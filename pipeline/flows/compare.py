"""``run.compare_with``: train reference models beside the configured method, on the same data.

For every method named in ``run.compare_with`` (``baseline``, or a list such as ``[baseline,
two_phase]``) the run trains that method into ``<run>/compare/<method>/`` — a run directory of its
own, with its own predictions, metrics and report — on exactly the data the main model saw:

* the data stages (source, protocol, profile, split) are shared through ``data_dir``, the same
  mechanism the experiment flow uses between its trials, so nothing is recomputed;
* the sampled and materialized training sets are shared by linking the main run's ``sample`` and
  ``materialize`` directories into the reference run: their ``_SUCCESS`` fingerprints match (the
  reference changes only the ``train`` section), so the reference run skips them.

Then a ``comparison`` stage pairs the method's and each reference's test predictions on ``id``
and computes the per-class F1 / recall deltas and the macro deltas with a paired stratified
bootstrap (:mod:`pipeline.evaluation.intervals`), into ``<run>/comparison/comparison.json``, which
the report shows. With ``run.seeds`` each reference trains the same seeds as the method
(:mod:`pipeline.flows.seeds`); the point estimates are the means over the seeds, and the intervals
are the two-level bootstrap's (seeds, then test rows paired across the models).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.evaluation.compare_table import compare_metrics
from pipeline.evaluation.intervals import DEFAULT_REPLICATES, paired_deltas
from pipeline.evaluation.report_sections import fixed
from pipeline.evaluation.seed_spread import average_metrics
from pipeline.flows.child_runs import child_config, link_stages
from pipeline.flows.seeds import seed_run_dirs, training_seeds
from pipeline.io import atomic_dir, read_json, read_success, write_json
from pipeline.prep.sampling import read_training_counts

SHARED_STAGES = ("sample", "materialize")


def compare_methods(cfg: Config, known: list[str]) -> list[str]:
    """The reference methods of ``run.compare_with`` (a name or a list), checked against ``known``."""
    raw = cfg.run.compare_with
    if raw in (None, "", []):
        return []
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"config key 'run.compare_with': expected a method name or a list of them, got {raw!r}")
    for n in names:
        if n not in known:
            raise ConfigError(f"config key 'run.compare_with': unknown method '{n}' (choose from: {', '.join(known)})")
    return [n for n in dict.fromkeys(names) if n != cfg.train.method or cfg.train.method_params]


def reference_config(cfg: Config, method: str, run_dir: Path) -> Config:
    """The main config with ``train.method = method`` (its own default parameters), run under
    ``<run>/compare/<method>/``, comparing with nothing, with the same training seeds."""
    cfg_ref = child_config(cfg, run_dir / "compare", method,
                           dataclasses.replace(cfg.train, method=method, method_params={}))
    return dataclasses.replace(cfg_ref, run=dataclasses.replace(cfg_ref.run, seeds=cfg.run.seeds))


def run_comparisons(cfg: Config, run_dir: Path, data_dir: Path, protocol_name: str, runner, *,
                    run_fn: Callable[..., str], spark, methods: list[str],
                    replicates: int = DEFAULT_REPLICATES) -> str:
    """Train and evaluate each reference method, then the paired comparison stage; return its fingerprint.

    ``run_fn`` is :func:`pipeline.flows.run.run_pipeline` (passed in: that module calls this one).
    """
    seeds = training_seeds(cfg)
    mine = seed_run_dirs(run_dir, seeds)
    refs = {}
    for m in methods:
        ref_dir = run_dir / "compare" / m
        link_stages(run_dir, ref_dir, SHARED_STAGES)
        run_fn(reference_config(cfg, m, run_dir), data_dir=str(data_dir), protocol_name=protocol_name)
        refs[m] = seed_run_dirs(ref_dir, seeds)
    key = {"method": [read_success(d / "evaluate") for d in mine], "replicates": replicates, "seed": cfg.run.seed,
           "references": {m: [read_success(d / "evaluate") for d in ds] for m, ds in refs.items()}}

    def metrics_of(dirs: list[Path]) -> dict:
        return average_metrics([read_json(d / "evaluate" / "metrics.json") for d in dirs])

    def spread_of(dirs: list[Path]) -> dict | None:
        p = dirs[0] / "seed_spread" / "spread.json"
        return read_json(p)["metrics"] if len(dirs) > 1 and p.is_file() else None

    def _compare(d: Path) -> None:
        main_metrics = metrics_of(mine)
        n = int(main_metrics["n_classes"])
        sizes = read_training_counts(run_dir / "sample")
        out = {"method": cfg.train.method, "method_params": cfg.train.method_params, "training_seeds": seeds,
               "references": {}}
        for m, ref_dirs in refs.items():
            deltas = paired_deltas(spark, [str(x / "predict" / "test") for x in mine],
                                   [str(x / "predict" / "test") for x in ref_dirs],
                                   n, replicates=replicates, seed=cfg.run.seed, label_col=cfg.data.label_col)
            c = compare_metrics(main_metrics, metrics_of(ref_dirs), deltas, sizes)
            c["method"]["seed_spread"], c["reference"]["seed_spread"] = spread_of(mine), spread_of(ref_dirs)
            c["run_dir"] = str(ref_dirs[0])
            out["references"][m] = c
        with atomic_dir(d) as tmp:
            write_json(Path(tmp) / "comparison.json", out)

    return runner.stage("comparison", key, _compare)


def format_comparison(run_dir: Path) -> str:
    """One line per reference for the run's closing summary (empty without a comparison)."""
    p = Path(run_dir) / "comparison" / "comparison.json"
    if not p.is_file():
        return ""
    comp = read_json(p)
    lines = []
    for ref, c in comp["references"].items():
        d = c["delta"]
        lo, hi = d["macro_f1_ci"]
        sds = [(b.get("seed_spread") or {}).get("macro_f1", {}).get("sd") for b in (c["method"], c["reference"])]
        over = (f" (means over {c['seeds']['method']} seeds; seed sd {sds[0]:.4f} and {sds[1]:.4f})"
                if None not in sds else "")
        lines.append(f"{comp['method']} vs {ref}: macro F1 {c['method']['macro_f1']:.4f} vs {c['reference']['macro_f1']:.4f}{over} "
                     f"(difference {fixed(d['macro_f1'], 4, True)}, 95% CI [{fixed(lo, 4, True)}, {fixed(hi, 4, True)}]); "
                     f"classes gained "
                     f"{len(c['gained'])}, lost {len(c['lost'])}; intervals cover "
                     + ("the training seeds and the test rows" if c.get("covers") == "seeds and test rows"
                        else "the test rows only (one training seed)"))
    return "\n".join(lines)
