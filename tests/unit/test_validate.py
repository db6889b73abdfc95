"""flows.validate knows every synth preset (a preset it does not know is refused as unknown)."""
from __future__ import annotations

from pipeline.config import load_config
from pipeline.data.synth import PRESETS
from pipeline.flows.validate import SYNTH_KINDS, data_kind


def test_every_synth_preset_is_known_to_validation():
    assert set(SYNTH_KINDS) == set(PRESETS)


def test_data_kind_of_each_preset():
    for preset in PRESETS:
        cfg = load_config("conf/tabular.yaml", [f"data.synth_preset={preset}"])
        assert data_kind(cfg, "run") == SYNTH_KINDS[preset]
