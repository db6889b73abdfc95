"""`imbalance config keys` is generated from the typed config; typos get the nearest key or value."""
from __future__ import annotations

import dataclasses

import pytest

from pipeline import config as config_module
from pipeline.cli import main
from pipeline.config import Config, load_config
from pipeline.config_keys import config_keys, format_default, with_suggestion
from pipeline.errors import ConfigError, InputError


def _sections() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(Config) if f.name != "source"]


def _section_class(f: dataclasses.Field) -> type:
    return getattr(config_module, f.type) if isinstance(f.type, str) else f.type


def _every_field() -> list[tuple[str, dataclasses.Field]]:
    return [(f"{s.name}.{f.name}", f) for s in _sections() for f in dataclasses.fields(_section_class(s))]


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


# How each annotation in config.py reads in `config keys`. A key with an annotation not listed here
# fails test_every_annotation_has_a_type_name: say how users should read it.
TYPE_NAMES = {
    "str": "str", "int": "int", "float": "float", "bool": "bool", "list": "list", "dict": "mapping",
    "Any": "any", "Optional[str]": "str or null", "Optional[int]": "int or null",
    "Optional[bool]": "bool or null", "Optional[list]": "list or null", "Optional[dict]": "mapping or null",
    "Optional[float]": "float or null",
    "ImageMode": "str", "Resize": "str", "LabelFrom": "str", "Optional[ImbalanceProtocol]": "str or null",
    "ProtocolScope": "str", "Optional[SynthPreset]": "str or null", "OptimizerName": "str",
    "SamplingMethod": "str", "StreamReader": "str",
}


def test_every_key_and_section_has_one_line_of_help():
    missing = [name for name, f in [(s.name, s) for s in _sections()] + _every_field()
               if not str(f.metadata.get("help", "")).strip()]
    assert not missing, f"config keys without help (give them help= in pipeline/config.py): {missing}"
    multi = [name for name, f in _every_field() if "\n" in f.metadata["help"]]
    assert not multi, f"help must be one line: {multi}"


def test_every_annotation_has_a_type_name():
    assert not {str(f.type) for _, f in _every_field()} - set(TYPE_NAMES)


def test_the_listing_has_every_field_with_its_type_and_default():
    rows = {r.key: r for r in config_keys()}
    for key, f in _every_field():
        assert key in rows, key
        assert rows[key].type == TYPE_NAMES[str(f.type)], key
        assert rows[key].default == _default(f), key
        assert rows[key].help == f.metadata["help"], key
    for s in _sections():
        assert rows[s.name].type == "section" and rows[s.name].help == s.metadata["help"]
    assert len(rows) == len(_every_field()) + len(_sections())


def test_free_form_mappings_say_so():
    rows = {r.key: r for r in config_keys()}
    for key in ("spark.conf", "train.loss_params", "train.method_params"):
        assert rows[key].type == "mapping" and rows[key].default == {}
    assert rows["train.read_sampling"].type == "mapping or null"
    assert rows["sample.target"].type == "any"


def test_defaults_print_as_yaml_writes_them():
    assert [format_default(v) for v in (None, True, 3, 1e-3, "runs", [128, 64], {})] == \
        ["null", "true", "3", "0.001", "runs", "[128, 64]", "{}"]


def test_config_keys_prints_one_line_per_key(capsys):
    assert main(["config", "keys"]) == 0
    out = capsys.readouterr().out.splitlines()
    by_key = {line.split()[0]: line for line in out[1:]}
    assert set(by_key) == {r.key for r in config_keys()}
    assert by_key["train.epochs"].split()[1:3] == ["int", "3"]
    assert "run directories go to" in by_key["run.root"]


def test_config_keys_of_one_section(capsys):
    assert main(["config", "keys", "train"]) == 0
    keys = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert keys[0] == "train" and all(k.startswith("train.") for k in keys[1:])
    assert "train.epochs" in keys


def test_config_keys_of_a_misspelled_section(capsys):
    assert main(["config", "keys", "trian"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["imbalance config: error: unknown config section 'trian' — did you mean 'train'?"]


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "unknown config key 'train.epoch' — did you mean 'train.epochs'?"),
    ("trian.epochs=3", "unknown config key 'trian' — did you mean 'train'?"),
    ("train.dropout=0.1", "unknown config key 'train.dropout' — did you mean 'model.dropout'?"),
    ("train.zzzzz=1", "unknown config key 'train.zzzzz'"),       # nothing close: the line as it was
])
def test_an_unknown_key_names_the_nearest(override, message):
    with pytest.raises(ConfigError) as e:
        load_config("conf/tabular.yaml", [override])
    assert str(e.value) == message


def test_an_unknown_key_in_a_file_names_the_nearest(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 0.01\n  epochz: 2\n")
    with pytest.raises(ConfigError, match=r"^unknown config key 'train.epochz' — did you mean 'train.epochs'\?$"):
        load_config(p)


# (override, the suggestion): each message is the real one, from the registry that owns the rule
VALUES = [
    ("train.loss=focl", "focal"), ("train.method=two_phse", "two_phase"), ("model.name=mpl", "mlp"),
    ("train.optimizer=adm", "adam"), ("sample.strategy=rsu", "rus"), ("train.read_sampling={strategy: ross}", "ros"),
    ("evaluate.threshold_moving=prio", "prior"), ("train.loss_params={gama: 2}", "gamma"),
    ("stream.reader=petastorn", "petastorm"),
    ("train.select_metric=macro_f2", "macro_f1"), ("run.compare_with=basline", "baseline"),
    ("data.synth_preset=plankon", "plankton"), ("evaluate.prior_correction=of", "off"),
    ("evaluate.calibrate=temprature", "temperature"), ("data.protocol=stp", "step"),
    ("data.protocol_scope=trian", "train"), ("model.classifier=cosin", "cosine"),
    ("train.method_params={dynamic_samplin: true}", "train.method_params.dynamic_sampling"),
    ("train.read_sampling={strategy: ros, cpa: 3}", "train.read_sampling.cap"),
    ("train.read_sampling={strategy: ros, initial: balanc}", "balanced"),
]


def _validation_error(overrides: list[str]) -> str:
    # deferred: validation imports torch; only these tests need it
    from pipeline.flows.validate import validate_config

    with pytest.raises(InputError) as e:
        validate_config(load_config("conf/tabular.yaml", ["run.root=/nonexistent/runs", *overrides]), "run",
                        warn=lambda w: None)
    return str(e.value)


@pytest.mark.parametrize("override, nearest", VALUES, ids=[v[0] for v in VALUES])
def test_a_misspelled_value_names_the_nearest(override, nearest):
    message = _validation_error([override])
    assert with_suggestion(message) == f"{message} — did you mean '{nearest}'?"


def test_sampling_target_names_the_nearest():
    message = _validation_error(["sample.strategy=rus", "sample.target=autoo"])
    assert with_suggestion(message).endswith(" — did you mean 'auto'?")


@pytest.mark.parametrize("override", ["model.depth=19", "model.name=resnet", "train.loss_params={gamma: -1}",
                                      "train.amp_dtype=fp32"])
def test_no_suggestion_without_a_close_name(override):
    message = _validation_error([override])
    assert with_suggestion(message) == message


def test_a_suggested_line_is_not_suggested_again():
    line = "unknown config key 'train.epoch' — did you mean 'train.epochs'?"
    assert with_suggestion(line) == line



def _listed(help_text: str) -> list[str]:
    """The ``a | b | c`` names of a key's help (before any ';' or '(' remark)."""
    head = help_text.split(";")[0].split("(")[0]
    head = head.split(":")[-1]
    return [w.strip() for w in head.split("|")]


def test_the_help_of_every_named_choice_lists_its_registry():
    from pipeline.data.synth import PRESETS
    from pipeline.prep.sampling import STRATEGIES
    from pipeline.stream.readers import READERS
    from pipeline.train.loop import OPTIMIZERS
    from pipeline.train.models import CLASSIFIERS, MODEL_NAMES

    fields = dict(_every_field())
    for key, registry in [("data.synth_preset", PRESETS), ("sample.strategy", STRATEGIES),
                          ("stream.reader", READERS), ("train.optimizer", tuple(OPTIMIZERS)),
                          ("model.name", MODEL_NAMES), ("model.classifier", CLASSIFIERS)]:
        assert _listed(fields[key].metadata["help"]) == list(registry), key
