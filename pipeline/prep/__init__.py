"""Spark stages before training: class distribution (profile), split, sampling, the exact selection
keys, imbalance protocols.

The library API, for a user's own Spark job or notebook (DataFrame in, DataFrame out; see
``docs/api.md``): :func:`class_distribution`, :func:`split_frame`, :func:`fit_resample`, and the
pure :func:`plan_counts` (how many rows each class gets).
"""
import importlib

_API = {"class_distribution": "pipeline.prep.profile", "split_frame": "pipeline.prep.split",
        "fit_resample": "pipeline.prep.resample", "plan_counts": "pipeline.prep.sampling_plan"}
__all__ = sorted(_API)


def __getattr__(name):
    # resolved on first use (PEP 562), so that importing one stage does not import pyspark for all
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'pipeline.prep' has no attribute {name!r}")
