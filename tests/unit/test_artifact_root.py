"""Where MLflow artifacts go: beside a local SQLite store, never in the working directory's ./mlruns."""
from pathlib import Path

from pipeline.config import Config
from pipeline.flows.tracking import artifact_root


def _cfg(uri=None, root="runs"):
    cfg = Config()
    cfg.tracking.uri = uri
    cfg.run.root = root
    return cfg


def test_the_default_store_keeps_artifacts_under_the_run_root(tmp_path):
    assert artifact_root(_cfg(root=str(tmp_path))) == (tmp_path / "mlartifacts").as_uri()


def test_a_given_sqlite_store_keeps_them_beside_its_database(tmp_path):
    db = tmp_path / "elsewhere" / "mlflow.db"
    assert artifact_root(_cfg(uri=f"sqlite:///{db}")) == (db.parent / "mlartifacts").as_uri()
    assert Path.cwd().as_uri() not in artifact_root(_cfg(uri=f"sqlite:///{db}"))


def test_a_server_decides_for_itself():
    assert artifact_root(_cfg(uri="http://127.0.0.1:5000")) is None
