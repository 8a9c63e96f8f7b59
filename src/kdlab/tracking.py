"""MLflow tracking; the only module that imports mlflow.

The store is ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<root>/mlflow.db`` where root is
``DVC_ROOT`` (set by DVC, also for queued experiments running in temp dirs) or the working directory.
A study (one set of params) is a parent run; the teacher, each student and the evaluation are children.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

EXPERIMENT = os.environ.get("KDLAB_EXPERIMENT", "kdlab")
ROLE, STUDY = "kdlab.role", "kdlab.study"


def root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root() / 'mlflow.db'}"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root(), capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def study_key(flat_params: dict) -> str:
    return hashlib.sha256(json.dumps(flat_params, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _experiment_id(client) -> str:
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(
            EXPERIMENT,
            artifact_location=(root() / "mlartifacts").as_uri(),
            # MLflow 3 otherwise opens the experiment in its GenAI view instead of the training-runs table
            tags={"mlflow.experimentKind": "custom_model_development"},
        )
    except Exception:  # created meanwhile by a parallel stage
        exp = client.get_experiment_by_name(EXPERIMENT)
        if exp is None:
            raise
        return exp.experiment_id


def _study_run_id(client, exp_id: str, key: str, flat_params: dict) -> str:
    found = client.search_runs([exp_id], filter_string=f"tags.`{STUDY}` = '{key}' and tags.`{ROLE}` = 'study'",
                               max_results=1)
    if found:
        return found[0].info.run_id
    name = os.environ.get("DVC_EXP_NAME") or f"study-{key[:8]}"
    run = client.create_run(exp_id, run_name=name, tags={STUDY: key, ROLE: "study", "kdlab.git_commit": _git_commit()})
    _log_params(client, run.info.run_id, flat_params)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _log_params(client, run_id: str, flat: dict) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


class Run:
    """A child run of the study; ``log`` takes a dict of numbers and an optional step."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def log(self, metrics: dict, step: int | None = None) -> None:
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def _study(self) -> "Run | None":
        study = self.client.get_run(self.run_id).data.tags.get("mlflow.parentRunId")
        return Run(self.client, study) if study else None

    def log_to_study(self, metrics: dict) -> None:
        if study := self._study():
            study.log(metrics)

    def log_study_artifact(self, path) -> None:
        if study := self._study():
            study.log_artifact(path)


@contextmanager
def run(stage: str, run_name: str, flat_params: dict, extra_params: dict | None = None):
    """Open a child run of this params set's study run; closed FINISHED, FAILED or KILLED."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    try:
        exp_id = _experiment_id(client)
    except Exception as e:
        raise RuntimeError(f"cannot reach the MLflow tracking store {uri}: {type(e).__name__}: {e}") from None
    key = study_key(flat_params)
    parent = _study_run_id(client, exp_id, key, flat_params)
    tags = {
        "mlflow.parentRunId": parent, ROLE: stage, STUDY: key, "kdlab.stage": stage,
        "kdlab.git_commit": _git_commit(), "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "dvc.stage": os.environ.get("DVC_STAGE", ""),
    }
    child = client.create_run(exp_id, run_name=run_name, tags=tags)
    run_id = child.info.run_id
    _log_params(client, run_id, {**flat_params, **(extra_params or {})})
    try:
        yield Run(client, run_id)
    except KeyboardInterrupt:
        client.set_terminated(run_id, "KILLED")
        raise
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


def runs(stage: str | None = None) -> list:
    """All runs of the kdlab experiment (optionally of one stage), for tests and reports."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri())
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return []
    flt = f"tags.`{ROLE}` = '{stage}'" if stage else ""
    return client.search_runs([exp.experiment_id], filter_string=flt, max_results=10000)
