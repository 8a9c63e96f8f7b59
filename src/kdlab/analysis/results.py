"""``kdlab results``: every run of every question as one tidy pandas DataFrame, and its CSV.

One row per trained model: the default study's teacher and students (``metrics/students``, joined with the test
metrics ``kdlab evaluate`` wrote to ``metrics/runs.json``). ``kdlab results`` adds the named
studies whose params files are there (``studies/q1``: question 1 in depth; ``studies/q23``: questions 2 and 3 with
controls): their teachers and students, ``run`` prefixed with the study's folder (``q1/kd.main-w0.5-e15-s0``).
The runs are the current params' (not whatever lies in those directories); each row's identity is read off the
spec its metrics file carries (:func:`kdlab.pipeline.spec.record`): its study (the key of its MLflow parent run),
question, arm, training method, seed, initialisation, architecture, width and teacher, then the params that set
the study apart and every number its stage measured. In a notebook::

    import pandas as pd
    df = pd.read_csv("reports/results.csv")
    df[df.question == 1].groupby("method").test_acc.agg(["mean", "std", "count"])
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

from kdlab.infra import io, tracking
from kdlab.infra.schema import flatten
from kdlab.pipeline.params import Params
from kdlab.pipeline.spec import RunSpec
from kdlab.pipeline.workspace import REPORTS, RUNS_JSON

RESULTS_CSV = REPORTS / "results.csv"
#: the study's params every row carries (the rest are in MLflow and params.yaml)
STUDY_PARAMS = ("data.name", "teacher.arch", "student.arch", "student.width", "student.epochs", "loss.alpha",
                "loss.temperature", "cache.views")
#: the default study's own model and budget: a named study's rows leave them empty (each row names its own arch,
#: width and teacher; data, loss and cache views are the default study's in every study)
OWN_PARAMS = ("teacher.arch", "student.arch", "student.width", "student.epochs")
#: identity columns first, in this order; then the study's params, then the measured numbers (sorted)
ID_COLUMNS = ("study", "question", "run", "arm", "method", "seed", "init", "arch",
              "teacher", "width")


def runs(p: Params, named: bool = False, only: tuple[str, object] | None = None
         ) -> list[tuple[str | None, dict, Callable[[dict], int], RunSpec]]:
    """(study folder, None for the default study; the study's own params, which its MLflow key hashes with
    params.yaml's; the question a run's spec answers; the spec) of every training run of the default study
    (``named``: and of every named study; ``only``: (a named study's folder, its loaded params): of that study
    alone), as the current params define them."""
    from kdlab.analysis import studies  # here, as each stage imports only the study code it reads

    if only is not None:
        chosen, out = [(only[0], studies.named(only[0]), only[1])], []
    else:
        from kdlab.pipeline import stages

        designs = {path: studies.design(path) for path in (studies.found() if named else [])}
        chosen = [(path.parent.name, design, design.load(path)) for path, design in designs.items()]
        out = [(None, {}, lambda rec: 1, make()) for make in stages.runs(p).values()]
    for folder, design, q in chosen:
        own, question = design.study_params(q), partial(design.question, q)
        out += [(folder, own, question, make()) for make in design.runs(p, q).values()]
    return out


def identity(study: str | None, rec: dict, question: int) -> dict:
    """A run's identity columns, read off the spec its metrics file carries (``rec``,
    :func:`kdlab.pipeline.spec.record`): ``run`` (a named study's prefixed with its folder: ``q1/kd.main-w0.5-e30-s0``;
    a named study's teacher ``q1/teacher.main``), its ``arm`` (the cell of the study: a teacher's is ``teacher``),
    ``method`` (``teacher`` for a teacher), seed, initialisation, architecture and width, and ``teacher``: the model
    file of the teacher whose logits or features the method reads (empty for labels-only methods); then the run's
    other tags (a study's own: ``q1_teacher``, ``q23_arm``, ``cut``)."""
    from kdlab import distill

    is_teacher = rec["role"] == "teacher"
    name = f"teacher.{rec['tags'][f'{study}_teacher']}" if is_teacher and study else rec["name"]
    cls = None if is_teacher else distill.method_class(rec["method"])
    reads = cls is not None and (cls.uses_teacher_logits or cls.uses_teacher_model)
    ident = {"question": question, "run": f"{study}/{name}" if study else name,
             "arm": "teacher" if is_teacher else rec["tags"].get("arm", rec["method"]),
             "method": "teacher" if is_teacher else rec["method"], "seed": rec["seed"], "init": rec["init"],
             "arch": rec["arch"], "width": rec["width"], "teacher": rec["teacher"] if reads else None}
    return {**ident, **{k: v for k, v in rec["tags"].items() if k not in ident}}


def complete(df, what: str):
    """``df`` (:func:`frame`), refused in one line if a run of it has no metrics file: ``what`` (a report) compares
    every arm over every seed, so it is not made from a study with holes."""
    missing = df.attrs.get("missing", [])
    if missing:
        raise io.StageError(f"{len(missing)} of the study's runs have no metrics file ({', '.join(missing[:3])}"
                            f"{' ...' if len(missing) > 3 else ''}); `dvc repro` makes them, then {what}")
    return df


def metrics_files(p: Params) -> dict[str, Path]:
    """{run name: its metrics file} for every run of the default study."""
    return {spec.name: spec.files[1] for *_, spec in runs(p)}


def frame(p: Params, named: bool = False, only: tuple[str, object] | None = None):
    """The tidy DataFrame of every run of the study whose metrics file exists (``missing``: the others'
    files, in ``df.attrs``); ``named``: the named studies' runs too; ``only``: (a named study's folder, its loaded
    params): that study's runs alone (its report's table)."""
    import pandas as pd

    flat = flatten(p)
    study = {"study": tracking.study_key(flat), **{k: flat[k] for k in STUDY_PARAMS}}
    tested = io.load_json(RUNS_JSON, "dvc repro evaluate") if RUNS_JSON.exists() and not only else {}
    records, missing, keys = [], [], {}
    for folder, own_params, question, spec in runs(p, named, only):
        path = spec.files[1]
        if not path.exists():
            missing.append(str(path))
            continue
        measured = dict(io.load_json(path, "dvc repro"))
        if "spec" not in measured:
            raise io.StageError(f"{path} carries no spec (a run's metrics file says which run it measures since "
                                f"issue 27); python scripts/spec_outputs.py adds it to files written before")
        rec = measured.pop("spec")
        ident = identity(folder, rec, question(rec))
        if folder is None:  # evaluate's test metrics: agreement, KL, ECE, FLOPs, images/s
            measured.update({k: v for k, v in tested.get(ident["run"], {}).items()
                             if isinstance(v, (int, float)) and k != "seed"})
            own = study
        else:  # a named study's rows: its key, the default study's own model and budget left empty
            if folder not in keys:  # the study's MLflow key, hashed once per study
                keys[folder] = tracking.study_key({**flat, **own_params})
            own = {**study, "study": keys[folder], **dict.fromkeys(OWN_PARAMS)}
        records.append({**own, **ident, **{k: v for k, v in measured.items() if isinstance(v, (int, float))}})
    df = pd.DataFrame.from_records(records)
    if len(df):
        ids = [c for c in ID_COLUMNS if c in df.columns]
        rest = sorted(c for c in df.columns if c not in ids and c not in STUDY_PARAMS)
        df = df[ids + list(STUDY_PARAMS) + rest]
    df.attrs["missing"] = missing
    return df


#: the columns the CSV gives in percent, as the reports do (the frame keeps fractions for the statistics)
PERCENT = ("test_acc", "test_acc_last", "val_acc", "val_acc_last", "agreement", "ece")


def in_percent(df):
    """A copy of ``df`` with :data:`PERCENT`'s columns in percent (rounded to 0.01 points)."""
    out = df.copy()
    for c in PERCENT:
        if c in out.columns:
            out[c] = (100 * out[c]).round(2)
    return out


def study_of(df):
    """Each run's study: the prefix of its name (``q1/kd.main-...``), ``default`` for the default study's."""
    return df.run.str.split("/").str[0].where(df.run.str.contains("/"), "default")


def summary_table(df) -> str:
    """The terminal's view of the runs: per study and arm, the runs and their test accuracy (%, mean and SD)."""
    if not len(df):
        return "no runs yet"
    # each teacher is its own row (a study's teachers differ on purpose); students group over seeds
    arm = df.arm.where(df.method != "teacher", df.run.str.split("/").str[-1])
    rows = (in_percent(df).assign(study=study_of(df), arm=arm).groupby(["study", "arm"], sort=False)["test_acc"]
            .agg(**{"runs": "count", "test acc (%)": "mean", "SD (points)": "std"}).round(2).reset_index())
    return rows.to_string(index=False, na_rep="-")


def run_results(p: Params, out: Path = RESULTS_CSV, named: bool = False):
    """Write the study's runs (``named``: and the named studies') to ``out`` (CSV, accuracies, agreement and ECE in
    percent) and say how many there are and which are missing; ``named`` also prints :func:`summary_table`."""
    df = frame(p, named)
    out.parent.mkdir(parents=True, exist_ok=True)
    io.save_text(in_percent(df).to_csv(index=False, float_format="%.7g"), out)
    counts = ", ".join(f"{study}: {n}" for study, n in df.groupby(study_of(df), sort=False).size().items()) \
        if len(df) else "none"
    if named:
        print(summary_table(df))
    print(f"wrote {out}: {len(df)} runs ({counts}); accuracies, agreement and ECE in percent")
    if df.attrs["missing"]:
        print(f"not run yet ({len(df.attrs['missing'])}): {', '.join(df.attrs['missing'][:5])}"
              f"{' ...' if len(df.attrs['missing']) > 5 else ''}; `dvc repro` makes them")
    return df
