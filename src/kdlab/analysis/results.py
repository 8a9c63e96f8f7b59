"""``kdlab results``: every run of every question as one tidy pandas DataFrame, and its CSV.

One row per trained model: the default study's teacher and students (``metrics/students``, joined with the test
metrics ``kdlab evaluate`` wrote to ``metrics/runs.json``). ``kdlab results`` adds the named
studies whose params files are there (``studies/q1``: question 1 in depth; ``studies/q23``: questions 2 and 3 with
controls): their teachers and students, ``run`` prefixed with the study's folder (``q1/kd.main-w0.5-e15-s0``).
The runs are the current params' (not whatever lies in those directories), and each row names its study (the key
of its MLflow parent run), question, group, training method, seed, the params that set it apart and every
number its stage measured. In a notebook::

    import pandas as pd
    df = pd.read_csv("reports/results.csv")
    df[df.question == 1].groupby("method").test_acc.agg(["mean", "std", "count"])
"""
from __future__ import annotations

from pathlib import Path

from kdlab.infra import io, tracking
from kdlab.infra.schema import flatten
from kdlab.pipeline.params import Params
from kdlab.pipeline.workspace import METRICS, REPORTS, RUNS_JSON, run_files

RESULTS_CSV = REPORTS / "results.csv"
#: the study's params every row carries (the rest are in MLflow and params.yaml)
STUDY_PARAMS = ("data.name", "teacher.arch", "student.arch", "student.width", "student.epochs", "loss.alpha",
                "loss.temperature", "cache.views")
#: the default study's own model and budget: a named study's rows leave them empty (each row names its own arch,
#: width and teacher; data, loss and cache views are the default study's in every study)
OWN_PARAMS = ("teacher.arch", "student.arch", "student.width", "student.epochs")
#: identity columns first, in this order; then the study's params, then the measured numbers (sorted)
ID_COLUMNS = ("study", "question", "run", "group", "method", "seed", "init", "arch",
              "teacher", "width")


def _q1(p: Params) -> list[tuple[dict, Path]]:
    from kdlab.analysis.evaluate import methods

    rows = [({"question": 1, "run": "teacher", "group": "teacher", "method": "teacher", "seed": p.teacher.seed,
              "arch": p.teacher.arch}, METRICS / "teacher.json")]
    for v in methods(p):
        for s in p.study.seeds:
            rows.append(({"question": 1, "run": f"{v}-{s}", "group": v, "method": v, "seed": s,
                          "arch": p.student.arch}, run_files(v, s)[1]))
    return rows


def teacher_rows(study: str, question: int, teachers: dict, metrics: Path) -> list[tuple[dict, Path]]:
    """A named study's teachers as rows of the table (a design's :func:`table` starts with them)."""
    return [({"question": question, "run": f"{study}/teacher.{name}", "group": "teacher",
              "method": "teacher", "seed": t.seed, "arch": t.arch, "width": t.width},
             metrics / "teachers" / f"{name}.json") for name, t in teachers.items()]


def _not_default(rows: list[tuple[dict, Path]]) -> list[tuple[dict, Path]]:
    """``rows`` of a named study, the default study's own params blanked (:data:`OWN_PARAMS`)."""
    return [({**dict.fromkeys(OWN_PARAMS), **ident}, path) for ident, path in rows]


def _named(p: Params) -> list[tuple[dict, Path]]:
    """The named studies' runs, where their params files are: (identity with the study's key, metrics file)."""
    from kdlab.analysis import studies

    flat, rows = flatten(p), []
    for path in studies.found():
        design = studies.design(path)
        q = design.load(path)
        key = tracking.study_key({**flat, **design.study_params(q)})
        rows += [({"study": key, **ident}, file) for ident, file in design.table(q)]
    return _not_default(rows)


def metrics_files(p: Params) -> dict[str, Path]:
    """{run name: its metrics file} for every run of the default study."""
    return {ident["run"]: path for ident, path in _q1(p)}


def frame(p: Params, named: bool = False):
    """The tidy DataFrame of every run of the study whose metrics file exists (``missing``: the others'
    files, in ``df.attrs``); ``named``: the named studies' runs too."""
    import pandas as pd

    flat = flatten(p)
    study = {"study": tracking.study_key(flat), **{k: flat[k] for k in STUDY_PARAMS}}
    tested = io.load_json(RUNS_JSON, "dvc repro evaluate") if RUNS_JSON.exists() else {}
    records, missing = [], []
    for ident, path in _q1(p) + (_named(p) if named else []):
        if not path.exists():
            missing.append(str(path))
            continue
        measured = dict(io.load_json(path, "dvc repro"))
        if ident["question"] == 1:  # evaluate's test metrics: agreement, KL, ECE, FLOPs, images/s
            measured.update({k: v for k, v in tested.get(ident["run"], {}).items()
                             if isinstance(v, (int, float)) and k != "seed"})
        records.append({**study, **ident, **{k: v for k, v in measured.items() if isinstance(v, (int, float))}})
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
    """The terminal's view of the runs: per study and group, the runs and their test accuracy (%, mean and SD)."""
    if not len(df):
        return "no runs yet"
    # each teacher is its own row (a study's teachers differ on purpose); students group over seeds
    group = df.group.where(df.method != "teacher", df.run.str.split("/").str[-1])
    rows = (in_percent(df).assign(study=study_of(df), group=group).groupby(["study", "group"], sort=False)["test_acc"]
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
