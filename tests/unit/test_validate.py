"""flows.validate knows every synth preset (a preset it does not know is refused as unknown)."""
from __future__ import annotations

from pipeline.config import load_config
from pipeline.data.synth import PRESET_KINDS, PRESETS
import pytest

from pipeline.errors import ConfigError
from pipeline.flows.validate import data_kind, validate_config


def test_every_synth_preset_says_what_it_makes():
    assert PRESET_KINDS == {"plankton": ("image", 103), "plankton_balanced": ("image", 103),
                            "tabular": ("features", 10), "digits": ("image", 10), "rare": ("features", 2)}


def test_data_kind_of_each_preset():
    for preset in PRESETS:
        cfg = load_config("conf/tabular.yaml", [f"data.synth_preset={preset}"])
        assert data_kind(cfg, "run") == PRESET_KINDS[preset]


@pytest.mark.parametrize("override,key", [("data.positive_rate=0.7", "data.positive_rate"),
                                          ("data.features=2", "data.features"),
                                          ("evaluate.recall_levels=[0]", "evaluate.recall_levels")])
def test_rare_preset_and_binary_levels_are_checked_before_any_stage(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(load_config("conf/rare.yaml", [override]), "run", warn=lambda _: None)
    validate_config(load_config("conf/rare.yaml"), "run", warn=lambda _: None)


@pytest.mark.parametrize("overrides,match", [
    (["data.input=conf", "data.images=conf"], "give one source, not both"),
    (["data.train_path=conf", "data.val_path=conf"], "'test_path' is missing"),
    (["data.protocol=step", "data.protocol_scope=everywhere"], "data.protocol_scope"),
    (["train.method=two_phase", "train.method_params={finetune_lr: 0}"], "finetune_lr"),
])
def test_source_and_two_phase_rules_are_checked_once_before_any_stage(overrides, match):
    """The rules the run used to check again mid-pipeline are validate_config's alone (one place,
    one exception type)."""
    with pytest.raises(ConfigError, match=match):
        validate_config(load_config("conf/tabular.yaml", overrides), "run", warn=lambda _: None)
