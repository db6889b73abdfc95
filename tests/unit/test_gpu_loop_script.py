"""bench/gpu_loop.py runs end to end on the CPU (the GPU check must not be its first run)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_loop.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_loop", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("extra", [["--model", "lenet"], ["--model", "resnet18"],
                                   ["--model", "lenet", "--predict"], ["--model", "lenet", "--storage", "memmap"]])
def test_gpu_loop_smoke_on_cpu(extra):
    res = _load().main(["--device", "cpu", "--steps", "2", "--batch", "4", "--rows", "200", "--row-group", "50",
                        "--repeat", "1", *extra])
    assert res["model"] == extra[1]
    assert res["mode"] == ("predict" if "--predict" in extra else "train")
    assert res["fed_images_s"] > 0 and res["on_gpu_images_s"] > 0 and res["ratio"] > 0
