"""The default study's training runs (``kdlab train RUN``): the teacher and the students of every method over
the seeds, each a :class:`kdlab.pipeline.spec.RunSpec` built from params.yaml and trained by
:func:`kdlab.pipeline.train.train`. A run is named by its model file under ``models/``: ``teacher``,
``students/kd-0``. Questions 2 and 3 are studies/q23's (:mod:`kdlab.analysis.q23_design`)."""
from __future__ import annotations

from functools import partial
from typing import Callable

from kdlab.pipeline.params import BASELINE, Params
from kdlab.pipeline.spec import RunSpec
from kdlab.pipeline.workspace import CACHE_FILE, METRICS, TEACHER, TEACHER_FILE, run_files


def teacher_spec(p: Params) -> RunSpec:
    return RunSpec("teacher", "teacher", p.teacher, p.teacher.seed, (TEACHER, METRICS / "teacher.json"),
                   all_views=True, log_model=True)


def student_spec(p: Params, method: str, seed: int) -> RunSpec:
    """One student of the distillation method ``method`` (or the baseline) and ``seed``."""
    return RunSpec(f"{method}-{seed}", "student", p.student, seed, run_files(method, seed), method,
                   teacher=TEACHER_FILE, teacher_model=p.teacher, cache=CACHE_FILE, tags={"method": method, "arm": method},
                   log_model=True)


def runs(p: Params) -> dict[str, Callable[[], RunSpec]]:
    """Every training run of the study, by name (its model file under models/, without ``.pt``)."""
    out: dict[str, Callable[[], RunSpec]] = {"teacher": partial(teacher_spec, p)}
    for seed in p.study.seeds:
        for v in (BASELINE, *p.study.methods):
            out[f"students/{v}-{seed}"] = partial(student_spec, p, v, seed)
    return out
