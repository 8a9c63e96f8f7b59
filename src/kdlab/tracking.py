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

from kdlab.io import StageError, first_line

EXPERIMENT = os.environ.get("KDLAB_EXPERIMENT", "kdlab")


class TrackingError(StageError):
    """The tracking store cannot be reached or used; the message names its URI."""


ROLE, STUDY = "kdlab.role", "kdlab.study"


def root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def _db_path() -> Path:
    return root() / "mlflow.db"


def tracking_uri() -> str:
    # timeout: parallel stages (dvc queue start -j N) wait for sqlite's write lock instead of failing
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{_db_path()}?timeout=60"


# a tracking server that is down should fail a stage in seconds, not after MLflow's minutes of retries
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


@contextmanager
def _store_lock():
    """Serialise creating the sqlite store and the experiment across processes (parallel queue workers)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        yield
        return
    import fcntl

    with open(root() / "mlflow.db.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _client():
    """(client, experiment id) for the store, created once, in WAL mode when it is the repo's sqlite file."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        for k, v in _HTTP_DEFAULTS.items():
            os.environ.setdefault(k, v)
    with _store_lock():
        try:
            client = MlflowClient(tracking_uri=uri)
            exp_id = _experiment_id(client)
        except Exception as e:
            if uri.startswith("sqlite:///"):
                raise _unusable(uri[len("sqlite:///"):].split("?", 1)[0], e) from None
            raise TrackingError(f"cannot reach the MLflow tracking store {uri} ({type(e).__name__}: "
                                f"{first_line(e)}); start it, or unset MLFLOW_TRACKING_URI to use the repo's sqlite "
                                f"store") from None
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            import sqlite3

            try:
                with sqlite3.connect(_db_path(), timeout=60) as db:  # readers no longer block the writer
                    db.execute("PRAGMA journal_mode=WAL")
                    _relocate(db)
            except sqlite3.Error as e:
                raise _unusable(_db_path(), e) from None
    return client, exp_id


def _unusable(db, e: Exception) -> TrackingError:
    return TrackingError(f"{db} is not a usable MLflow store ({type(e).__name__}: {first_line(e)}); move it aside "
                         f"(mv {db} {db}.bad) and rerun to start a new one")


#: the tables and columns where MLflow's sqlite store keeps absolute artifact locations
_LOCATIONS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("logged_models", "artifact_location"))


def _relocate(db) -> None:
    """A repository copied or moved with its mlflow.db still points at the old place's mlartifacts (MLflow
    stores absolute URIs): rewrite them to this repository's, so its runs log here and not into the original."""
    here = (root() / "mlartifacts").as_uri()
    row = db.execute("SELECT artifact_location FROM experiments WHERE name = ?", (EXPERIMENT,)).fetchone()
    if row is None or row[0] is None or row[0] == here or not row[0].startswith("file://") \
            or not row[0].endswith("/mlartifacts"):
        return
    old = row[0]
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for table, column in _LOCATIONS:
        if table in tables:
            pattern = old.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"
            db.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE {column} = ? "
                       f"OR {column} LIKE ? ESCAPE '\\'", (here, len(old) + 1, old, pattern))
    print(f"kdlab: {_db_path()} came from another place ({old}); its artifact locations now point at {here}")


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
    # the repo's store keeps artifacts in <repo>/mlartifacts; a tracking server stores them where it was told
    # (--artifacts-destination, proxied), so that every client of a shared server can read them
    remote = tracking_uri().startswith(("http://", "https://"))
    try:
        return client.create_experiment(
            EXPERIMENT,
            artifact_location=None if remote else (root() / "mlartifacts").as_uri(),
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
    try:
        _log_params(client, run.info.run_id, flat_params)
    finally:  # never left RUNNING
        _terminate(client, run.info.run_id, "FINISHED")
    return run.info.run_id


def _log_params(client, run_id: str, flat: dict) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def _close_abandoned(client, exp_id: str, key: str, run_name: str) -> None:
    """Runs of this study and name still RUNNING were killed without a chance to say so (SIGKILL)."""
    flt = (f"tags.`{STUDY}` = '{key}' and attributes.run_name = '{run_name}' "
           f"and attributes.status = 'RUNNING'")
    for r in client.search_runs([exp_id], filter_string=flt):
        client.set_terminated(r.info.run_id, "KILLED")


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
            with _logging("metrics", self.run_id):
                self.client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path) -> None:
        with _logging(str(path), self.run_id):
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


class _NoRun(Run):
    """What ranks other than 0 of a torchrun job log to: nothing (rank 0 logs the run)."""

    def __init__(self):
        super().__init__(None, "")

    def log(self, metrics: dict, step: int | None = None) -> None:
        pass

    def log_artifact(self, path) -> None:
        pass

    def _study(self) -> None:
        return None


@contextmanager
def _logging(what: str, run_id: str | None = None):
    """A failure to log becomes one line naming the store; what the stage wrote stays (see :func:`run`)."""
    try:
        yield
    except TrackingError:
        raise
    except Exception as e:
        raise TrackingError(f"MLflow could not log {what}{f' to run {run_id}' if run_id else ''} of "
                            f"{tracking_uri()} ({type(e).__name__}: {first_line(e)}); fix the store (or its artifact "
                            f"directory) and rerun the stage: it resumes from its checkpoint") from None


def _terminate(client, run_id: str, status: str) -> None:
    try:
        client.set_terminated(run_id, status)
    except Exception:  # the store itself is failing; the next run of this name closes it (_close_abandoned)
        pass


@contextmanager
def run(stage: str, run_name: str, flat_params: dict, extra_params: dict | None = None):
    """Open a child run of this params set's study run; closed FINISHED, FAILED or KILLED. Under torchrun,
    only rank 0 opens it."""
    if os.environ.get("RANK", "0") != "0":
        yield _NoRun()
        return
    client, exp_id = _client()
    key = study_key(flat_params)
    with _logging(f"the study and run {run_name!r}"):
        parent = _study_run_id(client, exp_id, key, flat_params)
        tags = {
            "mlflow.parentRunId": parent, ROLE: stage, STUDY: key, "kdlab.stage": stage,
            "kdlab.git_commit": _git_commit(), "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
            "dvc.stage": os.environ.get("DVC_STAGE", ""),
        }
        _close_abandoned(client, exp_id, key, run_name)
        child = client.create_run(exp_id, run_name=run_name, tags=tags)
    run_id = child.info.run_id
    try:
        with _logging("params", run_id):
            _log_params(client, run_id, {**flat_params, **(extra_params or {})})
        yield Run(client, run_id)
    except KeyboardInterrupt:
        _terminate(client, run_id, "KILLED")
        raise
    except BaseException:
        _terminate(client, run_id, "FAILED")
        raise
    with _logging("the run's end", run_id):
        client.set_terminated(run_id, "FINISHED")
