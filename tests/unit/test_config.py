"""Config loading: presets, overrides, and one clear error per bad key or value."""
import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.errors import ConfigError


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("run:\n  root: runs-a\ntrain:\n  epochs: 4\n")
    cfg = load_config(p, ["run.root=runs-test", "train.loss_params={gamma: 2.0}", "split.val=0.25"])
    assert cfg.run.root == "runs-test"
    assert cfg.run.id.startswith("c-")             # <file stem>-<hash of the resolved config>
    assert cfg.train.epochs == 4
    assert cfg.train.loss_params == {"gamma": 2.0}
    assert cfg.split.val == 0.25
    assert cfg.split.test == 0.2                   # untouched default


@pytest.mark.parametrize("override, needle", [
    ("train.epochz=3", "train.epochz"),
    ("nosuch.key=1", "nosuch"),
    ("train.epochs=three", "train.epochs"),
    ("train.amp=maybe", "train.amp"),
    ("model.hidden=5", "model.hidden"),
    ("noequals", "key=value"),
])
def test_bad_override_names_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_yaml_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_every_preset_in_conf_loads():
    from pathlib import Path

    presets = sorted((Path(__file__).parents[2] / "conf").glob("*.yaml"))
    assert presets, "conf/ has no presets"
    for p in presets:
        load_config(p)


def test_cli_bad_key_exits_2(capsys, tmp_path):
    rc = main(["run", str(tmp_path / "missing.yaml")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config file not found" in err[0]


def test_run_id_is_stem_and_hash_of_the_resolved_config(tmp_path):
    p = tmp_path / "demo.yaml"
    p.write_text("train:\n  loss: ce\n")
    a = load_config(p, ["run.root=r1"]).run.id
    assert a.startswith("demo-") and len(a) == len("demo-") + 8
    assert load_config(p, ["run.root=r2"]).run.id == a          # where the run lives is not part of it
    assert load_config(p, ["train.loss=ce"]).run.id == a        # same resolved config, same run
    assert load_config(p, ["spark.driver_memory=8g"]).run.id == a  # how it executes is not part of it
    assert load_config(p, ["train.loss=focal"]).run.id != a     # a different config, a different run
    assert load_config(p, ["run.id=mine"]).run.id == "mine"     # run.id names a run explicitly


def test_exponent_without_a_dot_is_a_number(tmp_path):
    """YAML 1.1 reads ``1e-9`` as a string; as a float key it is the number a user meant."""
    assert load_config("conf/tabular.yaml", ["train.lr=1e-9"]).train.lr == 1e-9
    f = tmp_path / "c.yaml"
    f.write_text("train: {lr: 5E-4}\n")
    assert load_config(f).train.lr == 5e-4
    with pytest.raises(ConfigError, match="train.lr"):
        load_config("conf/tabular.yaml", ["train.lr=1e-9x"])
