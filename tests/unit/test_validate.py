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


def test_two_phase_settings_are_typed_with_their_defaults_filled_in():
    from pipeline.config import SampleSection
    from pipeline.flows.validate import two_phase_settings

    tc = load_config("conf/tabular.yaml", ["train.method=two_phase", "train.epochs=4"]).train
    got = two_phase_settings(tc)
    assert got.pretrain == SampleSection(strategy="threshold", cap=5000) and got.read_sampling is None
    assert got.epochs == 4 and got.finetune_lr is None
    tc = load_config("conf/tabular.yaml", ["train.method=two_phase", "train.method_params={pretrain_epochs: 2, "
                                           "finetune_lr: 1, pretrain_read_sampling: {strategy: ros}}"]).train
    got = two_phase_settings(tc)
    assert got.pretrain is None and got.read_sampling == {"strategy": "ros"}
    assert got.epochs == 2 and got.finetune_lr == 1.0 and isinstance(got.finetune_lr, float)


@pytest.mark.parametrize("override,match", [("train.select_metric=f1", "unknown train.select_metric"),
                                            ("train.loss_params={drw_epoch: 1}", "needs train.loss=ldam")])
def test_one_rule_raises_one_exception_type_where_it_is_checked(override, match):
    """validate_config and the training loop call the same rule, which raises ConfigError in both."""
    from pipeline.train.loop import check_select_metric, split_loss_params

    cfg = load_config("conf/tabular.yaml", [override])
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg, "run", warn=lambda _: None)
    with pytest.raises(ConfigError, match=match):
        check_select_metric(cfg.train.select_metric, 2)
        split_loss_params(cfg.train)
    with pytest.raises(ConfigError, match="needs two-class data"):
        check_select_metric("pr_auc", 3)


def test_read_sampling_rules_live_in_read_sampling_spec_for_validate_and_the_loop():
    from pipeline.train.loop import read_sampling_spec

    tc = load_config(None, ["train.read_sampling={strategy: dynamic}"]).train
    with pytest.raises(ConfigError, match="needs stream.reader=petastorm"):
        read_sampling_spec(tc, reader="ray_data")
    with pytest.raises(ConfigError, match="dynamic sampling needs validation data"):
        read_sampling_spec(tc, has_val=False)
    assert read_sampling_spec(tc, reader="petastorm", has_val=True).strategy == "dynamic"
    with pytest.raises(ConfigError, match="dynamic sampling needs validation data"):
        validate_config(load_config("conf/tabular.yaml", ["train.read_sampling={strategy: dynamic}", "split.val=0"]),
                        "run", warn=lambda _: None)
