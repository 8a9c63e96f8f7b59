"""MLflow tracking; the only module that imports mlflow.

The store is ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<root>/mlflow.db`` where root is
``DVC_ROOT`` (set by DVC, also for queued experiments running in temp dirs) or the working directory.
A study (one set of params) is a parent run, named after the DVC experiment or the study's setting, whose
status and duration follow its children; the teacher, each student and the evaluation are children. Runs use
MLflow's own conventions: ``mlflow.source.git.commit``, ``mlflow.note.content`` descriptions, datasets through
``log_inputs``, models logged with a signature, params for configuration and tags for metadata. A run that
finishes supersedes an earlier finished run of the same name in its study (deleted, so restorable); earlier
failed or killed attempts stay, renamed as such.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

from kdlab.infra.io import StageError, first_line

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
    import logging

    from mlflow.tracking import MlflowClient

    # a store that fails (a read-only mlflow.db) is one line of kdlab's (TrackingError, with its cause), not also
    # MLflow's two logged tracebacks of about 90 lines
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
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
            raise TrackingError(f"cannot reach the MLflow tracking store {uri} ({_reason(e)}); start it, or unset "
                                f"MLFLOW_TRACKING_URI to use the repo's sqlite store") from None
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
    return TrackingError(f"{db} is not a usable MLflow store ({_reason(e)}); move it aside (mv {db} {db}.bad) and "
                         f"rerun to start a new one")


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
    name = os.environ.get("DVC_EXP_NAME") or study_name(flat_params, key)
    run = client.create_run(exp_id, run_name=name, tags={
        STUDY: key, ROLE: "study", "mlflow.source.git.commit": _git_commit(), "mlflow.source.name": "dvc repro",
        "mlflow.source.type": "LOCAL", "mlflow.note.content": study_description(flat_params, key),
        **({"dvc.exp_name": os.environ["DVC_EXP_NAME"]} if os.environ.get("DVC_EXP_NAME") else {})})
    try:  # from here on, its status follows its children's (_follow_children)
        _log_params(client, run.info.run_id, flat_params)
    except BaseException:  # never left RUNNING
        _terminate(client, run.info.run_id, "FAILED")
        raise
    return run.info.run_id


def study_name(flat: dict, key: str) -> str:
    """``fashion_mnist resnet20->resnet8 alpha 0.5 T 4.0 (60de9b)``: what sets a study apart, and its key."""
    get = flat.get
    return (f"{get('data.name', '?')} {get('teacher.arch', '?')}->{get('student.arch', '?')} "
            f"alpha {get('loss.alpha', '?')} T {get('loss.temperature', '?')} ({key[:6]})")


def study_description(flat: dict, key: str) -> str:
    get = flat.get
    exp = os.environ.get("DVC_EXP_NAME")
    source = f"DVC experiment `{exp}`" if exp else "dvc repro"
    return (f"kdlab study `{key}`: every run of one params set ({source} "
            f"at commit `{_git_commit()[:10] or 'none'}`). Data `{get('data.name')}`; teacher `{get('teacher.arch')}` "
            f"({get('teacher.epochs')} epochs); students `{get('student.arch')}` at width {get('student.width')} "
            f"({get('student.epochs')} epochs); KD alpha {get('loss.alpha')}, temperature {get('loss.temperature')}; "
            f"seeds {get('study.seeds')}. Runs that DVC reused from an earlier study are linked in by the report "
            f"stage (tag `kdlab.reused_from`). The report is the `report` run's `report.html`.")


#: `kdlab ui`'s two views of the runs table (MLflow's shared view states, stored as experiment tags): every
#: training run flat, with the columns that tell runs apart and their results; and the studies (parent runs)
#: with their headline numbers. Column ids are MLflow's: group.`name`
UI_VIEWS = {
    "kdlab-runs": {"searchFilter": "params.seed LIKE '%'",  # the training runs: the others have no seed
                   "selectedColumns": ["params.`method`", "params.`seed`", "params.`loss.alpha`",
                                       "params.`loss.temperature`", "metrics.`test_acc`", "metrics.`agreement`",
                                       "metrics.`best_val_acc`", "tags.`best_epoch`", "attributes.`Models`"],
                   # a row per study and arm (a cell of its design: the default study's are its methods; mean
                   # over its seeds), each opening onto its seeds' runs: groups
                   # never mix studies (other alphas, the named studies)
                   "groupBy": {"aggregateFunction": "average",
                               "groupByKeys": [{"mode": "tag", "groupByData": STUDY},
                                               {"mode": "param", "groupByData": "arm"}]}},
    "kdlab-studies": {"searchFilter": f"tags.`{ROLE}` = 'study'",
                      "selectedColumns": ["params.`loss.alpha`", "params.`loss.temperature`", "params.`student.epochs`",
                                          "metrics.`raw.acc`", "metrics.`kd.acc`", "metrics.`q1.kd_vs_raw.gain`",
                                          "metrics.`q1.kd_vs_raw.p_holm`",
                                          "metrics.`kd_correct_only.acc`",
                                          "metrics.`q1.kd_correct_only_vs_kd.gain`"]},
}


def ui_paths() -> dict[str, str]:
    """{view: the UI's path to it}: the experiment's runs in model-training mode (MLflow 3's UI otherwise opens in
    its GenAI mode) with one of :data:`UI_VIEWS`, written to the experiment first."""
    client, exp_id = _client()
    out = {}
    for key, view in UI_VIEWS.items():
        state = {**view, "orderByKey": "attributes.start_time", "orderByAsc": False}
        client.set_experiment_tag(exp_id, f"mlflow.sharedViewState.{key}", json.dumps(state))
        out[key] = f"#/experiments/{exp_id}/runs?viewStateShareKey={key}&workflowType=machine_learning"
    return out


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
        self.log_steps({k: [(step or 0, v)] for k, v in metrics.items()})

    def log_steps(self, series: dict[str, list[tuple[int, float]]]) -> None:
        """``{"train_loss": [(step, value), ...]}`` in batches of MLflow's 1000-metric limit."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # 7 significant digits: a float32 accuracy of 0.425 reads 0.425, not 0.42500001192092896
        batch = [Metric(k, float(f"{float(v):.7g}"), now, step) for k, points in series.items() for step, v in points]
        for i in range(0, len(batch), 1000):
            with _logging("metrics", self.run_id):
                self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def set_tags(self, tags: dict) -> None:
        """Metadata (the chosen epoch, a parameter count, an output's hash): tags, not metrics."""
        from mlflow.entities import RunTag

        with _logging("tags", self.run_id):
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        with _logging(str(path), self.run_id):
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """``text`` as the artifact ``artifact_file``: the same name in every run, so runs compare."""
        with _logging(artifact_file, self.run_id):
            self.client.log_text(self.run_id, text, artifact_file)

    def log_dataset(self, meta: dict, contexts: dict[str, str]) -> None:
        """The prepared splits as MLflow datasets (``contexts``: split -> ``mlflow.data.context``), each named
        after the data and split, with the prepared file's sha256 as its digest: the run page's Datasets."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        shape = [-1, meta["channels"], meta["image_size"], meta["image_size"]]
        spec = {"features": json.dumps([{"type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": shape}}]),
                "targets": json.dumps([{"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}}])}
        inputs = [DatasetInput(Dataset(name=f"{meta['dataset']}-{split}", digest=meta["sha256"][split][:12],
                                       source_type="local", source=json.dumps({"uri": f"data/prepared/{split}.pt"}),
                                       schema=json.dumps({"mlflow_tensorspec": spec}),
                                       profile=json.dumps({"num_rows": meta["sizes"][split],
                                                           "classes": meta["classes"]})),
                               tags=[InputTag("mlflow.data.context", context)])
                  for split, context in contexts.items()]
        with _logging("the datasets", self.run_id):
            self.client.log_inputs(self.run_id, datasets=inputs)

    def log_model(self, model, example, description: str) -> str | None:
        """``model`` (in eval mode, on the CPU) as this run's MLflow model ``model``: torch.export's pt2 (no
        pickle) with a signature from ``example`` (normalized images); returns its model id."""
        from importlib.metadata import version

        import mlflow
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        with torch.no_grad():
            out = model(example)
        mlflow.set_tracking_uri(tracking_uri())
        with _logging("the model", self.run_id), mlflow.start_run(run_id=self.run_id):
            info = mlflow.pytorch.log_model(
                model, name="model", input_example=example.numpy(), serialization_format="pt2",
                signature=infer_signature(example.numpy(), out.numpy()),
                pip_requirements=[f"torch=={version('torch')}"],
                metadata={"description": description})
        return info.model_id

    def register_model(self, run_id: str, name: str, description: str) -> None:
        """Register the model logged by run ``run_id`` as a new version of ``name``."""
        import mlflow

        with _logging(f"the registered model {name}", run_id):
            found = self.client.search_logged_models(experiment_ids=[self._experiment()],
                                                     filter_string=f"source_run_id = '{run_id}'", max_results=1)
            if not found:
                return
            mlflow.set_tracking_uri(tracking_uri())
            version = mlflow.register_model(f"models:/{found[0].model_id}", name)
            self.client.update_model_version(name, version.version, description=description)

    def _experiment(self) -> str:
        return self.client.get_run(self.run_id).info.experiment_id

    def _study(self) -> "Run | None":
        study = self.client.get_run(self.run_id).data.tags.get("mlflow.parentRunId")
        return Run(self.client, study) if study else None

    def log_to_study(self, metrics: dict) -> None:
        if study := self._study():
            study.log(metrics)

    def log_study_text(self, text: str, artifact_file: str) -> None:
        if study := self._study():
            study.log_text(text, artifact_file)

    def siblings(self) -> dict[str, "Run"]:
        """The study's other runs by name (the newest of each name)."""
        run = self.client.get_run(self.run_id)
        found = _children(self.client, run.info.experiment_id, run.data.tags.get(STUDY))
        return {r.info.run_name: Run(self.client, r.info.run_id) for r in found if r.info.run_id != self.run_id}

    def log_to_runs(self, metrics_by_run: dict[str, dict]) -> None:
        """Numbers measured here about the study's other runs (``{"kd-0": {"agreement": ...}}``), logged to them,
        so the runs table shows them in those runs' rows."""
        siblings = self.siblings()
        for name, metrics in metrics_by_run.items():
            if name in siblings:
                siblings[name].log(metrics)

    def link_reused(self, metrics_files: dict[str, Path]) -> list[str]:
        """For each run name whose stage DVC did not re-run for this study (an experiment reuses the teacher and
        the baseline), a copy in this study of the run that wrote that metrics file (found by its
        ``kdlab.metrics_sha256`` tag): its params, tags, final metrics and curves, tagged ``kdlab.reused_from``.
        Returns the names linked."""
        from kdlab.infra.io import sha256

        run = self.client.get_run(self.run_id)
        exp_id, parent = run.info.experiment_id, run.data.tags.get("mlflow.parentRunId")
        present, linked = set(self.siblings()) | {run.info.run_name}, []
        for name, path in metrics_files.items():
            if name in present or not Path(path).exists():
                continue
            with _logging(f"the reused run {name}", self.run_id):
                found = self.client.search_runs([exp_id], f"tags.`kdlab.metrics_sha256` = '{sha256(path)}'",
                                                max_results=1, order_by=["attributes.start_time ASC"])
                if found:
                    _copy_run(self.client, found[0], parent, run.data.tags.get(STUDY))
                    linked.append(name)
        return linked


def _copy_run(client, original, parent: str, key: str) -> None:
    from mlflow.entities import Metric, Param

    keep = {k: v for k, v in original.data.tags.items() if (not k.startswith("mlflow.") or k in (
        "mlflow.source.git.commit", "mlflow.source.name", "mlflow.source.type"))
        and k not in ("kdlab.metrics_sha256", "kdlab.superseded_by")}
    note = (f"Reused: DVC did not re-run this stage for this study (its deps were unchanged), so this is a copy "
            f"of run `{original.info.run_id}` of study `{original.data.tags.get(STUDY)}`, linked in by the report "
            f"stage. {original.data.tags.get('mlflow.note.content', '')}")
    copy = client.create_run(original.info.experiment_id, run_name=original.info.run_name,
                             start_time=original.info.start_time, tags={
                                 **keep, STUDY: key, "mlflow.parentRunId": parent, "mlflow.note.content": note,
                                 "kdlab.reused_from": original.info.run_id})
    metrics = [Metric(m.key, m.value, m.timestamp, m.step) for k in original.data.metrics
               for m in client.get_metric_history(original.info.run_id, k)]
    params = [Param(k, v) for k, v in original.data.params.items()]
    for i in range(0, max(len(metrics), len(params)), 100):
        client.log_batch(copy.info.run_id, metrics=metrics[i:i + 100], params=params[i:i + 100])
    # its files too (metrics.json: MLflow's compare view fails on a run without artifacts; a logged model's folder
    # stays with the original)
    import tempfile

    for item in client.list_artifacts(original.info.run_id):
        if not item.is_dir:
            with tempfile.TemporaryDirectory() as tmp:
                client.log_artifact(copy.info.run_id, client.download_artifacts(original.info.run_id, item.path, tmp))
    client.set_terminated(copy.info.run_id, "FINISHED", end_time=original.info.end_time)


class _NoRun(Run):
    """What ranks other than 0 of a torchrun job log to: nothing (rank 0 logs the run)."""

    def __init__(self):
        super().__init__(None, "")

    def log_steps(self, series: dict) -> None:
        pass

    def set_tags(self, tags: dict) -> None:
        pass

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_dataset(self, meta: dict, contexts: dict) -> None:
        pass

    def log_model(self, model, example, description: str) -> None:
        return None

    def register_model(self, run_id: str, name: str, description: str) -> None:
        pass

    def _study(self) -> None:
        return None

    def siblings(self) -> dict:
        return {}

    def link_reused(self, metrics_files: dict) -> list:
        return []


@contextmanager
def _logging(what: str, run_id: str | None = None):
    """A failure to log becomes one line naming the store; what the stage wrote stays (see :func:`run`)."""
    try:
        yield
    except TrackingError:
        raise
    except Exception as e:
        raise TrackingError(f"MLflow could not log {what}{f' to run {run_id}' if run_id else ''} of "
                            f"{tracking_uri()} ({_reason(e)}); fix the store (or its artifact directory) and rerun "
                            f"the stage: it resumes from its checkpoint") from None


def _reason(e: BaseException) -> str:
    """``e`` in a line, and the innermost exception it came from where that is another (SQLAlchemy's first line
    can be advice about autoflush while its cause says the database is read-only)."""
    root, seen = e, {id(e)}
    while (root.__cause__ or root.__context__) is not None and id(root.__cause__ or root.__context__) not in seen:
        root = root.__cause__ or root.__context__
        seen.add(id(root))
    said = f"{type(e).__name__}: {first_line(e)}"
    return said if root is e else f"{said}; caused by {type(root).__name__}: {first_line(root)}"


def _terminate(client, run_id: str, status: str) -> None:
    try:
        client.set_terminated(run_id, status)
    except Exception:  # the store itself is failing; the next run of this name closes it (_close_abandoned)
        pass


#: how a run that did not finish is renamed once a later run of its name has (it stays, as history)
_ATTEMPT = {"FAILED": "failed attempt", "KILLED": "killed attempt"}


def _supersede(client, exp_id: str, key: str, run_name: str, run_id: str) -> None:
    """After ``run_id`` finished: earlier finished runs of its name in its study are deleted (restorable in the
    UI's deleted runs), earlier failed or killed ones renamed ``name (failed attempt)``, so a study shows each
    run once."""
    flt = f"tags.`{STUDY}` = '{key}' and attributes.run_name = '{run_name}'"
    for r in client.search_runs([exp_id], filter_string=flt, max_results=1000):
        if r.info.run_id == run_id:
            continue
        if r.info.status == "FINISHED":
            client.set_tag(r.info.run_id, "kdlab.superseded_by", run_id)
            client.delete_run(r.info.run_id)
        elif r.info.status in _ATTEMPT:
            client.update_run(r.info.run_id, name=f"{run_name} ({_ATTEMPT[r.info.status]})")


def _children(client, exp_id: str, key: str) -> list:
    """The runs of study ``key`` other than its parent, oldest first."""
    return client.search_runs([exp_id], f"tags.`{STUDY}` = '{key}' and tags.`{ROLE}` != 'study'", max_results=5000,
                              order_by=["attributes.start_time ASC"])


def _follow_children(client, exp_id: str, key: str, parent: str) -> None:
    """The study's status and end follow its children: RUNNING while one runs, else the worst final status
    (FAILED, KILLED, FINISHED) and the last child's end, so the runs table shows the study's real duration."""
    children = _children(client, exp_id, key)
    latest = {}  # a run name's last attempt speaks for it: a failed attempt that a re-run replaced does not
    for r in children:
        name = r.info.run_name
        for suffix in _ATTEMPT.values():
            name = name.removesuffix(f" ({suffix})")
        latest[name] = r
    statuses = {r.info.status for r in latest.values()}
    if "RUNNING" in statuses:
        client.update_run(parent, status="RUNNING")
        return
    worst = next((st for st in ("FAILED", "KILLED") if st in statuses), "FINISHED")
    ends = [r.info.end_time for r in children if r.info.end_time]
    client.set_terminated(parent, worst, end_time=max(ends) if ends else None)


@contextmanager
def run(stage: str, run_name: str, flat_params: dict, extra_params: dict | None = None, description: str = ""):
    """Open a child run of this params set's study run; closed FINISHED, FAILED or KILLED. Under torchrun,
    only rank 0 opens it. ``description`` is the run page's description (``mlflow.note.content``)."""
    if os.environ.get("RANK", "0") != "0":
        yield _NoRun()
        return
    client, exp_id = _client()
    key = study_key(flat_params)
    with _logging(f"the study and run {run_name!r}"):
        parent = _study_run_id(client, exp_id, key, flat_params)
        tags = {
            "mlflow.parentRunId": parent, ROLE: stage, STUDY: key, "kdlab.stage": stage,
            "mlflow.source.git.commit": _git_commit(), "mlflow.source.name": f"kdlab {stage}",
            "mlflow.source.type": "LOCAL", "mlflow.note.content": description or f"kdlab {stage}: {run_name}",
        }
        for tag, var in (("dvc.exp_name", "DVC_EXP_NAME"), ("dvc.stage", "DVC_STAGE")):
            if os.environ.get(var):  # set by DVC only; an empty tag is noise
                tags[tag] = os.environ[var]
        _close_abandoned(client, exp_id, key, run_name)
        child = client.create_run(exp_id, run_name=run_name, tags=tags)
        client.update_run(parent, status="RUNNING")
    run_id = child.info.run_id

    def close(status: str) -> None:
        _terminate(client, run_id, status)
        try:
            _follow_children(client, exp_id, key, parent)
        except Exception:  # the store is failing; the stage's own error says so
            pass

    try:
        with _logging("params", run_id):
            _log_params(client, run_id, {**flat_params, **(extra_params or {})})
        yield Run(client, run_id)
    except KeyboardInterrupt:
        close("KILLED")
        raise
    except BaseException:
        close("FAILED")
        raise
    with _logging("the run's end", run_id):
        client.set_terminated(run_id, "FINISHED")
        _supersede(client, exp_id, key, run_name, run_id)
        _follow_children(client, exp_id, key, parent)
