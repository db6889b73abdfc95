"""The command line and the config list what the registries accept, and share their defaults."""
from __future__ import annotations

import argparse
import typing

import pytest

from pipeline.cli import build_parser
from pipeline.config import DataSection, OptimizerName, SynthPreset
from pipeline.config_keys import config_keys
from pipeline.data.images import MODES, RESIZES
from pipeline.data.ingest import LABEL_FROM
from pipeline.data.synth import PRESET_KINDS, PRESETS
from pipeline.evaluation.thresholds import RULES, TUNE_METRICS


def test_preset_and_optimizer_names_are_the_registries():
    # deferred: torch is slow to import
    from pipeline.train.loop import OPTIMIZERS

    assert PRESETS == typing.get_args(SynthPreset) and set(PRESETS) == set(PRESET_KINDS)
    assert tuple(OPTIMIZERS) == typing.get_args(OptimizerName)
    rows = {r.key: r for r in config_keys()}
    assert rows["train.optimizer"].help == " | ".join(OPTIMIZERS)
    assert " | ".join(PRESETS) in rows["data.synth_preset"].help


def _choices(command: str) -> dict:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices[command]._actions}


@pytest.mark.parametrize("command,dest,registry", [
    ("ingest", "mode", MODES), ("ingest", "resize", RESIZES), ("ingest", "label_from", LABEL_FROM),
    ("split", "mode", MODES), ("split", "resize", RESIZES), ("synth", "preset", PRESETS),
    ("evaluate", "threshold_moving", RULES), ("evaluate", "tune_metric", TUNE_METRICS)])
def test_argparse_choices_come_from_the_registries(command, dest, registry):
    assert tuple(_choices(command)[dest].choices) == tuple(registry)


@pytest.mark.parametrize("command", ["ingest", "split"])
def test_min_size_defaults_to_the_config_default(command):
    assert _choices(command)["min_size"].default == DataSection().min_size
