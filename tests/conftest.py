import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test with a temp dir as the working directory (stages use relative paths)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def study_dir(path: Path, raw: dict, tracking: str | None = None) -> dict:
    """A study directory: ``raw`` as its params.yaml and its data prepared. Returns the environment to run
    ``python -m kdlab`` in it: this checkout's sources, no torchrun variables, and MLflow at ``tracking``
    (default: the directory's own sqlite store)."""
    import yaml

    from kdlab import data, params

    path.mkdir(parents=True, exist_ok=True)
    (path / "params.yaml").write_text(yaml.safe_dump(raw))
    cwd = os.getcwd()
    os.chdir(path)
    try:
        data.prepare(params.from_dict(raw).data)
    finally:
        os.chdir(cwd)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    return dict(env, PYTHONPATH=str(REPO / "src"), PYTHONUNBUFFERED="1",
                MLFLOW_TRACKING_URI=tracking or f"sqlite:///{path / 'mlflow.db'}")
