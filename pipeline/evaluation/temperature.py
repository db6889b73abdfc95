"""Temperature scaling fitted on a validation predictions table, in Spark, nothing collected.

Guo et al. (2017) fit one scalar T on held-out data by negative log-likelihood. Here the NLL and
its two derivatives in β = 1/T (:func:`pipeline.data.prior_correction.nll_terms`) are summed per
partition with ``mapInArrow`` and added on the driver: three numbers per pass, so the fit's memory
does not grow with the rows. The sums are exact integers of 2⁻⁴⁰ units
(:func:`pipeline.evaluation.calibration.fixed_sum`), so however the rows fall into partitions and
batches, the same predictions give the same temperature to the last bit. :func:`pipeline.data.prior_correction.fit_temperature` runs damped Newton
on the convex NLL(β) and asks for one pass per step (the corrected log-probabilities are cached
on the executors for those passes).
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
from pyspark.sql import functions as F

from pipeline.evaluation.calibration import fixed_sum, from_fixed
from pipeline.evaluation.scan import arrow_probs, load_predictions
from pipeline.errors import InputError
from pipeline.data.prior_correction import corrected_logits, fit_temperature, nll_row_terms

# each term an exact sum in 2⁻⁴⁰ units, as a decimal string (a partition's sum can pass 2⁶³)
_TERMS_SCHEMA = "n long, nll string, g string, h string"


def _terms_fn(k: int, weights: Optional[np.ndarray], beta: float):
    def fn(batches: Iterator) -> Iterator:
        n, acc = 0, [0, 0, 0]
        for batch in batches:
            if batch.num_rows == 0:
                continue
            P, err = arrow_probs(batch.column("probs"), k)
            if err:
                raise InputError(err)
            labels = batch.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
            rows = nll_row_terms(corrected_logits(P, weights), labels, beta)
            acc = [a + fixed_sum(r) for a, r in zip(acc, rows)]
            n += batch.num_rows
        yield pa.RecordBatch.from_pydict({"n": [n], **{c: [str(a)] for c, a in zip(("nll", "g", "h"), acc)}})

    return fn


def fit_temperature_on(spark, predictions, weights: Optional[np.ndarray] = None, label_col: str = "label",
                       n_classes: Optional[int] = None) -> float:
    """The temperature minimising the validation NLL of softmax((log p + log w) / T).

    ``predictions``: a predictions table (``label``, ``probs``), normally the validation split's;
    ``weights``: the prior correction applied first (None: the raw probabilities).
    """
    loaded = load_predictions(spark, predictions, label_col, None, n_classes)
    df = loaded.df.where(F.col("label").isNotNull()).persist()
    try:
        def terms(beta: float) -> np.ndarray:
            # one row per partition; integer sums do not depend on partition order or membership
            parts = df.mapInArrow(_terms_fn(loaded.n_classes, weights, beta), _TERMS_SCHEMA).collect()
            if not sum(r["n"] for r in parts):
                raise InputError("temperature scaling: the validation predictions have no labelled rows")
            return np.array([from_fixed(sum(int(r[c]) for r in parts)) for c in ("nll", "g", "h")], np.float64)

        return fit_temperature(terms)
    finally:
        df.unpersist()


__all__ = ["fit_temperature_on"]
