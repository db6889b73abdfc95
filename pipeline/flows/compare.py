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
the report shows.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.evaluation.compare_table import compare_metrics
from pipeline.evaluation.intervals import DEFAULT_REPLICATES, paired_deltas
from pipeline.flows.tracking import tracking_uri
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
    ``<run>/compare/<method>/`` and comparing with nothing."""
    train = dataclasses.replace(cfg.train, method=method, method_params={})
    run = dataclasses.replace(cfg.run, root=str(run_dir / "compare"), id=method, compare_with=None)
    # tracked in the main run's store and experiment (not a store under compare/)
    tracking = dataclasses.replace(cfg.tracking, uri=tracking_uri(cfg),
                                   experiment=cfg.tracking.experiment or str(cfg.run.id))
    return dataclasses.replace(cfg, run=run, train=train, tracking=tracking)


def _link_shared(run_dir: Path, ref_dir: Path) -> None:
    ref_dir.mkdir(parents=True, exist_ok=True)
    for name in SHARED_STAGES:
        src, dst = run_dir / name, ref_dir / name
        if src.is_dir() and not dst.exists():
            os.symlink(os.path.relpath(src, ref_dir), dst)


def run_comparisons(cfg: Config, run_dir: Path, data_dir: Path, protocol_name: str, runner,
                    run_fn: Callable[..., str], spark, methods: list[str],
                    replicates: int = DEFAULT_REPLICATES) -> str:
    """Train and evaluate each reference method, then the paired comparison stage; return its fingerprint.

    ``run_fn`` is :func:`pipeline.flows.run.run_pipeline` (passed in: that module calls this one).
    """
    refs = {}
    for m in methods:
        ref_dir = run_dir / "compare" / m
        _link_shared(run_dir, ref_dir)
        run_fn(reference_config(cfg, m, run_dir), data_dir=str(data_dir), protocol_name=protocol_name)
        refs[m] = ref_dir
    key = {"method": read_success(run_dir / "evaluate"), "replicates": replicates, "seed": cfg.run.seed,
           "references": {m: read_success(d / "evaluate") for m, d in refs.items()}}

    def _compare(d: Path) -> None:
        main_metrics = read_json(run_dir / "evaluate" / "metrics.json")
        n = int(main_metrics["n_classes"])
        sizes = read_training_counts(run_dir / "sample")
        out = {"method": cfg.train.method, "method_params": cfg.train.method_params, "references": {}}
        for m, ref_dir in refs.items():
            deltas = paired_deltas(spark, str(run_dir / "predict" / "test"), str(ref_dir / "predict" / "test"),
                                   n, replicates=replicates, seed=cfg.run.seed, label_col=cfg.data.label_col)
            ref_metrics = read_json(ref_dir / "evaluate" / "metrics.json")
            out["references"][m] = compare_metrics(main_metrics, ref_metrics, deltas, sizes)
            out["references"][m]["run_dir"] = str(ref_dir)
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
        lines.append(f"{comp['method']} vs {ref}: macro F1 {c['method']['macro_f1']:.4f} vs {c['reference']['macro_f1']:.4f} "
                     f"(difference {d['macro_f1']:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}]); classes gained "
                     f"{len(c['gained'])}, lost {len(c['lost'])}; intervals cover "
                     + ("the training seeds and the test rows" if c.get("covers") == "seeds and test rows"
                        else "the test rows only (one training seed)"))
    return "\n".join(lines)
