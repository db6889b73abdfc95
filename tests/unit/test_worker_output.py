"""The driver's console during Ray training: marked worker lines shown, Ray's own lines to the run's log."""
from __future__ import annotations

import pytest

from pipeline import engines
from pipeline.io import CONSOLE_MARK
from pipeline.train.progress import BARS_ENV, NoBar, bars_wanted


@pytest.fixture
def routed(tmp_path, monkeypatch):
    printed = []
    monkeypatch.setattr(engines, "_ray_printer", printed.append)   # stands in for Ray's own printer
    monkeypatch.setattr(engines, "_worker_log", None)
    return engines.route_worker_logs(tmp_path / "train" / "ray-workers.log"), printed


def test_marked_lines_reach_the_console_and_everything_reaches_the_log(routed, capsys):
    log, ray_printed = routed
    engines._route_worker_output({"pid": "41", "actor_name": "PlacementGroupCleaner", "is_err": True, "ip": "h",
                                  "lines": ["Failed to query Ray Train Controller actor state."]})
    engines._route_worker_output({"pid": "42", "actor_name": "RayTrainWorker", "is_err": False, "ip": "h",
                                  "lines": ["Setting up process group", CONSOLE_MARK + "epoch 1/2: loss 0.5"]})
    err = capsys.readouterr().err
    assert err == "epoch 1/2: loss 0.5\n"                           # no "(pid=...)", no Ray chatter
    text = log.read_text()
    assert "(PlacementGroupCleaner pid=41, h, stderr) Failed to query" in text
    assert "(RayTrainWorker pid=42, h, stdout) Setting up process group" in text
    assert ray_printed == []


def test_progress_bar_updates_still_go_to_rays_printer(routed, capsys):
    _, ray_printed = routed
    bar = '{"__magic_token__": "__ray_tqdm_magic_token__", "x": 1}'
    engines._route_worker_output({"pid": "42", "actor_name": "RayTrainWorker", "is_err": False, "lines": [bar]})
    assert [d["lines"] for d in ray_printed] == [[bar]] and capsys.readouterr().err == ""


def test_without_a_run_log_rays_printing_stays_minus_the_mark(monkeypatch):
    printed = []
    monkeypatch.setattr(engines, "_ray_printer", printed.append)
    monkeypatch.setattr(engines, "_worker_log", None)
    engines._route_worker_output({"pid": "42", "is_err": False, "lines": [CONSOLE_MARK + "epoch 1/1"]})
    assert printed[0]["lines"] == ["epoch 1/1"]


def test_bars_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv(BARS_ENV, raising=False)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    assert bars_wanted() is False                                  # piped: the epoch line only
    monkeypatch.setenv(BARS_ENV, "1")
    assert bars_wanted() is True                                   # a worker told so by its driver
    from pipeline.train.loop import _progress_bar  # deferred: torch is heavy

    monkeypatch.setenv(BARS_ENV, "0")
    assert isinstance(_progress_bar(10, "epoch 1/1", in_ray=False), NoBar)
