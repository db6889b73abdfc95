"""Shared fixtures: one real local SparkSession and one real local Ray per test session."""
from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def spark():
    from pipeline.config import SparkSection
    from pipeline.engines import get_spark

    s = get_spark(SparkSection(master="local[2]", shuffle_partitions=4, driver_memory="2g"))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from pipeline.config import RaySection
    from pipeline.engines import get_ray

    get_ray(RaySection(num_cpus=2))
    yield ray
    ray.shutdown()


TIERS = [os.path.join(os.path.dirname(os.path.abspath(__file__)), t) for t in ("cluster", "recommend")]


def pytest_ignore_collect(collection_path, config):
    """``pytest tests`` leaves out the cluster tier (minutes of real clusters) and the recommend tier
    (minutes of real searches); each runs only when named: ``pytest -q tests/cluster``,
    ``pytest -q tests/recommend``."""
    tier = str(collection_path)
    if tier not in TIERS:
        return None
    named = any(os.path.abspath(str(a).split("::")[0]).startswith(tier) for a in config.args)
    return None if named else True
