"""The installed `imbalance` command explains its configuration: `config keys`, `config show`,
the nearest key or value for a typo (one line, exit 2), and every synth preset in `synth --help`."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import config as config_module
from pipeline.config import Config, load_config
from pipeline.data.synth import PRESETS
from pipeline.prep.sampling import STRATEGIES

ROOT = Path(__file__).resolve().parents[2]
IMBALANCE = Path(sys.executable).parent / "imbalance"      # the console script of this environment


def _imbalance(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [str(IMBALANCE)] if IMBALANCE.exists() else [sys.executable, "-m", "pipeline.cli"]
    return subprocess.run([*cmd, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _error_lines(r: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.strip()]


def _command(command: str, config: str, root: Path) -> list[str]:
    """``run CONFIG run.root=ROOT`` or ``config show CONFIG``."""
    return ["run", config, f"run.root={root}"] if command == "run" else ["config", "show", config]


def _dotted_keys() -> list[str]:
    out = []
    for s in dataclasses.fields(Config):
        if s.name != "source":
            cls = getattr(config_module, s.type) if isinstance(s.type, str) else s.type
            out += [f"{s.name}.{f.name}" for f in dataclasses.fields(cls)]
    return out


def test_config_keys_lists_every_key():
    r = _imbalance("config", "keys")
    assert r.returncode == 0, r.stderr[-2000:]
    listed = {line.split()[0] for line in r.stdout.splitlines()[1:] if line.strip()}
    assert set(_dotted_keys()) <= listed
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("train.epochs "))
    assert line.split()[1:3] == ["int", "3"]


def test_config_show_prints_the_resolved_config_as_the_run_records_it():
    r = _imbalance("config", "show", "conf/demo.yaml", "train.epochs=3")
    assert r.returncode == 0, r.stderr[-2000:]
    shown = json.loads(r.stdout)
    cfg = load_config("conf/demo.yaml", ["train.epochs=3"])
    assert shown["train"]["epochs"] == 3
    assert shown["run"]["id"] == cfg.run.id
    assert shown["train"]["seed"] == 0          # run.seeds' first seed, as <run>/config.json has it
    assert set(shown) == set(cfg.to_dict())


def test_config_show_as_yaml_loads_back_to_the_same_config(tmp_path):
    r = _imbalance("config", "show", "conf/tabular.yaml", "train.loss=focal", "--format", "yaml")
    assert r.returncode == 0, r.stderr[-2000:]
    p = tmp_path / "shown.yaml"
    p.write_text(r.stdout)
    assert load_config(p).to_dict() == yaml.safe_load(r.stdout)
    assert yaml.safe_load(r.stdout)["train"]["loss"] == "focal"


@pytest.mark.parametrize("command", ["run", "config"])
def test_a_misspelled_key_is_one_line_exit_2_with_the_nearest(tmp_path, command):
    r = _imbalance(*_command(command, "conf/demo.yaml", tmp_path), "train.epoch=3")
    assert r.returncode == 2, r.stderr[-2000:]
    assert _error_lines(r) == [f"imbalance {command}: error: unknown config key 'train.epoch' — did you mean "
                               "'train.epochs'?"]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["run", "config"])
def test_a_misspelled_value_is_one_line_exit_2_with_the_nearest(tmp_path, command):
    r = _imbalance(*_command(command, "conf/tabular.yaml", tmp_path), "train.loss=focl")
    assert r.returncode == 2, r.stderr[-2000:]
    lines = _error_lines(r)
    assert len(lines) == 1 and lines[0].startswith(f"imbalance {command}: error: train.loss: unknown loss 'focl'")
    assert lines[0].endswith(" — did you mean 'focal'?")
    assert not any(tmp_path.iterdir())


def test_synth_help_lists_every_preset():
    r = _imbalance("synth", "--help")
    assert r.returncode == 0
    missing = [p for p in PRESETS if p not in r.stdout]
    assert not missing, r.stdout


@pytest.mark.parametrize("command", ["run", "experiment", "retrain", "train"])
def test_config_commands_point_to_config_keys(command):
    r = _imbalance(command, "--help")
    assert r.returncode == 0
    assert "imbalance config keys" in " ".join(r.stdout.split())


@pytest.mark.parametrize("args, command, names", [
    (["synth", "--preset", "plankon", "--out", "x"], "synth", "--preset"),
    (["sample", "--input", "x", "--out", "y", "--strategy", "rsu"], "sample", "--strategy"),
    (["synth", "--rows", "many", "--out", "x"], "synth", "--rows"),
])
def test_a_bad_command_line_option_is_one_line_exit_2_listing_the_choices(tmp_path, args, command, names):
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    lines = _error_lines(r)
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"imbalance {command}: error: argument {names}"), lines
    if names != "--rows":                          # the registry's names, not a hand-kept list
        known = PRESETS if command == "synth" else STRATEGIES
        assert all(f"'{k}'" in lines[0] for k in known), lines[0]
    assert not any(tmp_path.iterdir())


def test_without_verbose_the_console_drops_library_notices_and_keeps_ours(monkeypatch):
    import warnings

    from pipeline.cli import _quiet

    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _quiet(False)
        warnings.warn("a library's deprecation", DeprecationWarning)
        warnings.warn_explicit("a library's notice", UserWarning, "x.py", 1, module="pyspark.sql")
        warnings.warn_explicit("our warning", UserWarning, "x.py", 1, module="pipeline.train.loop")
        warnings.warn_explicit("a dependency's notice", FutureWarning, "y.py", 1, module="tqdm.std")
        warnings.warn_explicit("our deprecation", FutureWarning, "x.py", 2, module="pipeline.config")
    assert [str(w.message) for w in seen] == ["our warning", "our deprecation"]
