import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one torch thread each, here and in every process a test
    # starts (two 2-thread training processes on 2 cores slow each other far more than 2x)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


# the warm launcher (kdlab.warm) is opt-in; the suite opts in, so the many `kdlab` processes its tests start skip
# most of their fixed cost (tests/test_warm.py covers both paths, and that the default is the caller's process)
os.environ.setdefault("KDLAB_WARM", "1")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test with a temp dir as the working directory (stages use relative paths)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name: [state, ppid, pgrp, ...] (OSError once it is gone)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def merge(base: dict, over: dict) -> dict:
    """``base`` with ``over``'s keys replaced, section by section."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def shipped_with(over: dict) -> dict:
    """The shipped params.yaml with ``over`` merged in: a complete params file (kdlab refuses partial ones)."""
    import yaml

    return merge(yaml.safe_load((REPO / "params.yaml").read_text()), over)


#: the tiny synthetic study the tests train (seconds per stage on 2 cores); :func:`tiny` varies it
TINY = {
    "data": {"name": "synthetic", "val_size": 100,
             "synthetic": {"n_train": 500, "n_test": 100, "image_size": 10, "channels": 1, "classes": 3}},
    "views": {"pad": 1},
    "teacher": {"arch": "resnet8", "width": 0.5, "epochs": 2, "lr": 0.05},
    "student": {"arch": "resnet8", "width": 0.25, "epochs": 1, "lr": 0.05},
    # compile is not the subject of most tests (tests/test_train.py covers it): off, it saves ~20 s a stage
    "train": {"batch_size": 50, "eval_batch_size": 200, "threads": 1, "compile": False},
    "cache": {"views": 2},
}


def tiny(over: dict | None = None) -> dict:
    """A complete params mapping of a tiny synthetic study: the shipped params.yaml, then :data:`TINY`, then
    ``over`` merged in section by section."""
    return merge(shipped_with(TINY), over or {})


def study_dir(path: Path, raw: dict, tracking: str | None = None) -> dict:
    """A study directory: the shipped params with ``raw`` merged in as its params.yaml, and its data prepared.
    Returns the environment to run ``python -m kdlab`` in it: this checkout's sources, no torchrun variables,
    and MLflow at ``tracking`` (default: the directory's own sqlite store)."""
    import yaml

    from kdlab.core import data
    from kdlab.pipeline import params
    from kdlab.pipeline.workspace import PREPARED

    raw = shipped_with(raw)
    path.mkdir(parents=True, exist_ok=True)
    (path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    cwd = os.getcwd()
    os.chdir(path)
    try:
        data.prepare(params.from_dict(raw).data, PREPARED)
    finally:
        os.chdir(cwd)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    return dict(env, PYTHONPATH=str(REPO / "src"), PYTHONUNBUFFERED="1",
                MLFLOW_TRACKING_URI=tracking or f"sqlite:///{path / 'mlflow.db'}")



@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Under `make test` (xdist, --dist loadgroup): the end-to-end module is one group, everything else
    another, so each worker runs one of them from start to end (the two take about as long; otherwise the
    end-to-end worker also takes a share of the rest and finishes last). Without the end-to-end tests (make
    test-fast) the rest is shared between the workers; without xdist the marks do nothing."""
    if config.getoption("markexpr") or not any(item.get_closest_marker("xdist_group") for item in items):
        return  # a selection by marks (-m "not slow") runs before deselection, so it cannot be told here
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group("rest"))
