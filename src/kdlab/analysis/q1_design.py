"""Question 1 in depth, the named study in ``studies/q1`` (``make q1``): does distillation cap the student?

Its params are ``studies/q1/params.yaml`` (section ``q1``, checked by :func:`load`); data, views, the cache's
views, ``train.*`` and ``loss.*`` are the default study's (params.yaml), ``q1.recipe`` (the recipe the pilot
adopted) overrides the training recipe of every run. Every run trains on a seeded subset of the prepared
training split (``q1.train_images``; a teacher may have its own, larger one) and chooses its checkpoint on a
seeded subset of the validation split (``q1.val_images``).

This module is the study's design: its params (:class:`Q1`), its runs and the arguments of its stages
(``kdlab train --study studies/q1/params.yaml RUN``, ``kdlab cache | report --study studies/q1/params.yaml``;
``q1_pilot`` is :mod:`kdlab.pipeline.pilot`, the report :mod:`kdlab.analysis.q1_report`), the runs named as
:func:`runs` lists them:

- ``train teachers/RUN``: trains ``q1.teachers[RUN]`` on the labels, keeping its best-on-validation state
  (``final.pt``).
- ``cache --teacher T``: the teacher's logits on the cached views of the subset (as
  :mod:`kdlab.pipeline.cache`), whether it is right on each clean training image, its accuracy on validation and
  test, how many training views and images it gets wrong, and its test predictions with their confidence.
- ``train students/V.T-wW-eE-sS`` (``raw-wW-eE-sS``, ``ls-...``: on the labels alone): the student
  ``q1.student`` trained E epochs with the method V from teacher T (its cache, or its model for ``kd_online``);
  writes its metrics and its test predictions. An arm (:func:`arm_name`: ``kd.main-e30``) is a method, teacher
  and budget over ``q1.seeds``; :func:`students` lists them.

Every file is tensors or plain data (:func:`kdlab.infra.io.load_torch`, JSON).
"""
from __future__ import annotations

import dataclasses
import re
from functools import partial
from pathlib import Path
from typing import Callable

from kdlab import distill
from kdlab.infra import io
from kdlab.infra.schema import ParamsError, build, choice, flatten_dict, no_duplicates, positive
from kdlab.pipeline.params import ModelParams, Params, with_overrides
from kdlab.pipeline.spec import RunSpec, Source
from kdlab.pipeline.study import (
    Layout,
    Recipe,
    StudentSpec,
    TeacherRun,
    check_recipe,
    check_study,
    load_section,
    subset,
    teacher_spec,
)

LAYOUT = Layout("q1")
#: the study's params file (relative to the repository root, where its stages run)
STUDY = LAYOUT.params
REBUILD = LAYOUT.rebuild
CACHES = LAYOUT.data / "logits"
METRICS = LAYOUT.metrics
#: per teacher: its accuracy and the training views and images it gets wrong (q1_cache)
CACHE_METRICS = METRICS / "caches"
#: per student (and teacher): identity and test predictions, for the per-class and per-confidence analysis
TESTS = METRICS / "tests"
SNAPSHOT = re.compile(r"^(?P<run>.+)_e(?P<epoch>\d+)$")


@dataclasses.dataclass(frozen=True)
class Long:
    """Longer budgets, for the comparison of KD and the labels where raw has plateaued: raw at each of
    ``budgets`` (the plateau rule reads its last two), ``labels`` and ``methods`` (from ``q1.teacher``) at
    ``epochs``, the last of them. Empty: none."""
    budgets: list[int] = dataclasses.field(default_factory=list)
    epochs: int = 0
    labels: list[str] = dataclasses.field(default_factory=list)
    methods: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Q1:
    train_images: int = 5000
    val_images: int = 2000
    subset_seed: int = 0
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    teachers: dict[str, TeacherRun] = dataclasses.field(default_factory=dict)
    #: the teacher of the budget arms (``methods`` at every budget)
    teacher: str = "main"
    #: every teacher with a logit cache (a run, or a snapshot ``<run>_e<k>``) -> the run it comes from, so that
    #: its cache stage depends on that run's directory alone (dvc.yaml)
    cached: dict[str, str] = dataclasses.field(default_factory=dict)
    student: StudentSpec = StudentSpec()
    #: student epochs: raw, every one of ``labels`` and every one of ``methods`` at each
    budgets: list[int] = dataclasses.field(default_factory=list)
    #: methods on the labels alone besides raw (``ls``: the control for KD's regularisation)
    labels: list[str] = dataclasses.field(default_factory=list)
    #: methods distilled from ``teacher`` at every budget
    methods: list[str] = dataclasses.field(default_factory=list)
    #: longer budgets for raw, and for some of ``labels`` and ``methods`` at the last of them (:class:`Long`)
    long: Long = Long()
    #: the other teachers, each distilled with kd at ``quality_epochs``
    quality: list[str] = dataclasses.field(default_factory=list)
    quality_epochs: int = 5
    #: question 1b's controls, distilled from ``control_teacher`` at ``quality_epochs``
    control_teacher: str = "main_e10"
    controls: list[str] = dataclasses.field(default_factory=list)
    #: the training recipe of every run and cache of the study (a :class:`kdlab.pipeline.study.Recipe`, as the
    #: pilot adopted it; its lr is every teacher's and the student's); empty: the default study's train.*
    recipe: dict = dataclasses.field(default_factory=dict)
    #: the families of comparisons the report tests, declared before the runs (Holm within each family): family
    #: -> comparisons ``"A - B"`` of arms (:func:`arm_name`), or ``"A - teacher"`` (the student minus the accuracy
    #: of the teacher it was distilled from)
    families: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    #: the smallest effect of interest and the equivalence margin (points)
    effect: float = 0.5
    #: raw has plateaued at the last budget when it gains less than this (points, validation) over the budget
    #: before it
    plateau: float = 0.2
    #: a run whose final validation accuracy is below this (points) has collapsed: the report counts it and leaves
    #: its seed out of its arm's pairs (declared before the runs, never averaged in)
    collapse: float = 50.0
    #: the recipe pilot's params (kdlab pilot: :mod:`kdlab.pipeline.pilot` reads and checks them)
    pilot: dict = dataclasses.field(default_factory=dict)

    def _check_long(self) -> None:
        lg = self.long
        if any(b < 1 for b in lg.budgets) or sorted(set(lg.budgets)) != lg.budgets:
            raise ParamsError("q1.long.budgets", f"strictly increasing epochs: {lg.budgets}")
        if lg.budgets and lg.budgets[0] <= self.budgets[-1]:
            raise ParamsError("q1.long.budgets", f"{lg.budgets} must all be longer than q1.budgets {self.budgets}")
        if (lg.labels or lg.methods) and lg.epochs != (lg.budgets or [None])[-1]:
            raise ParamsError("q1.long.epochs", f"{lg.epochs} must be the last of q1.long.budgets {lg.budgets} "
                              "(where raw runs too)")
        for key, listed in (("labels", self.labels), ("methods", self.methods)):
            no_duplicates(f"q1.long.{key}", getattr(lg, key))
            for m in getattr(lg, key):
                if m not in listed:
                    raise ParamsError(f"q1.long.{key}", f"{m!r} is not in q1.{key} {listed}")

    def check(self) -> None:
        check_study("q1", self)
        for name, t in self.teachers.items():
            if "_e" in name:
                raise ParamsError(f"q1.teachers.{name}", "a run's name may not contain `_e` (snapshots are <run>_e<k>)")
            for k in t.snapshots:
                if not 0 < k < t.epochs:
                    raise ParamsError(f"q1.teachers.{name}.snapshots", f"{k} is not an epoch before the last ({t.epochs})")
        for key in ("teacher", "control_teacher"):
            if getattr(self, key) not in self.cached:
                raise ParamsError(f"q1.{key}", f"{getattr(self, key)!r} is not in q1.cached {list(self.cached)}")
        for t, run in self.cached.items():
            if teacher_source(self, t)[0] != run:
                raise ParamsError(f"q1.cached.{t}", f"comes from teacher run {teacher_source(self, t)[0]!r}, not {run!r}")
        for t in self.quality:
            teacher_source(self, t)
            if t not in self.cached:
                raise ParamsError("q1.quality", f"{t!r} is not in q1.cached {list(self.cached)}")
        if not self.budgets or any(b < 1 for b in self.budgets) or sorted(set(self.budgets)) != self.budgets:
            raise ParamsError("q1.budgets", f"strictly increasing epochs, at least one: {self.budgets}")
        if self.teacher in self.quality or self.control_teacher == self.teacher:
            raise ParamsError("q1.quality", f"the other teachers (quality, control_teacher) must not include "
                              f"q1.teacher {self.teacher!r}: its arms are the budget arms")
        self._check_long()
        if self.quality_epochs not in self.budgets:
            raise ParamsError("q1.quality_epochs", f"{self.quality_epochs} must be one of q1.budgets {self.budgets} "
                              f"(its raw and kd arms are the budget arms')")
        for key in ("labels", "methods", "controls", "quality"):
            no_duplicates(f"q1.{key}", getattr(self, key))
        for m in self.labels:
            choice("q1.labels", m, distill.names())
            cls = distill.method_class(m)
            if m == "raw" or cls.uses_teacher_logits or cls.uses_teacher_model:
                raise ParamsError("q1.labels", f"{m}: list methods on the labels alone other than raw (the baseline)")
        positive("q1.effect", self.effect)
        positive("q1.plateau", self.plateau)
        positive("q1.collapse", self.collapse)
        r = recipe(self)
        if r is not None:
            for key, lr in [*((f"q1.teachers.{n}.lr", t.lr) for n, t in self.teachers.items()),
                            ("q1.student.lr", self.student.lr)]:
                if lr != r.lr:
                    raise ParamsError(key, f"{lr} is not q1.recipe.lr {r.lr}: the recipe's lr is every run's")

        for key in ("methods", "controls"):
            for v in getattr(self, key):
                choice(f"q1.{key}", v, distill.names())
                if v == "raw":
                    raise ParamsError(f"q1.{key}", "raw (labels only) is the baseline, trained at every budget already; "
                                      "list distillation methods here")
        known = {arm_name(v, t, e) for v, t, _, e in students(self)}
        for fam, comparisons in self.families.items():
            if not comparisons:
                raise ParamsError(f"q1.families.{fam}", "at least one comparison")
            no_duplicates(f"q1.families.{fam}", comparisons)
            for c in comparisons:
                a, _, b = c.partition(" - ")
                if a not in known or (b not in known and b != "teacher") or a == b:
                    raise ParamsError(f"q1.families.{fam}", f"{c!r} is not `A - B` or `A - teacher` of two arms "
                                      f"of the study ({', '.join(sorted(known))})")
                if b == "teacher" and arm_teacher(a) is None:
                    raise ParamsError(f"q1.families.{fam}", f"{c!r}: {a} has no teacher")


def teacher_source(q: Q1, name: str) -> tuple[str, int | None]:
    """(run, snapshot epoch or None) of a cached teacher's name: ``main`` or ``main_e3``."""
    m = SNAPSHOT.match(name)
    run, epoch = (m["run"], int(m["epoch"])) if m else (name, None)
    if run not in q.teachers:
        raise ParamsError("q1.cached", f"{name!r}: no teacher run {run!r} in q1.teachers {sorted(q.teachers)}")
    if epoch is not None and epoch not in q.teachers[run].snapshots:
        raise ParamsError("q1.cached", f"{name!r}: epoch {epoch} is not in q1.teachers.{run}.snapshots")
    return run, epoch


def recipe(q: Q1) -> Recipe | None:
    """The study's recipe (q1.recipe), checked; None: the default study's train.* as they are."""
    if not q.recipe:
        return None
    r = build(Recipe, q.recipe, "q1.recipe")
    check_recipe(r, "q1.recipe")
    return r


def overrides(q: Q1) -> dict:
    """What every run and cache of the study sets of the params (:attr:`RunSpec.overrides`)."""
    r = recipe(q)
    return r.overrides() if r else {}


def load(path: Path = STUDY) -> Q1:
    return load_section(path, "q1", Q1)


def teacher_file(name: str, q: Q1) -> Path:
    run, epoch = teacher_source(q, name)
    return LAYOUT.teachers / run / ("final.pt" if epoch is None else f"e{epoch}.pt")


def student_name(method: str, teacher: str | None, width: float, epochs: int, seed: int) -> str:
    """``kd.main-w0.5-e15-s0``; a labels-only run names no teacher: ``raw-w0.5-e15-s0``."""
    head = method if teacher is None else f"{method}.{teacher}"
    return f"{head}-w{float(width)}-e{epochs}-s{seed}"


def arm_name(method: str, teacher: str | None, epochs: int) -> str:
    """An arm of the study (its runs over q1.seeds): ``kd.main-e30``, ``raw-e40``."""
    return f"{method if teacher is None else method + '.' + teacher}-e{epochs}"


def arm_teacher(arm: str) -> str | None:
    """The teacher of an arm named by :func:`arm_name` (None: on the labels)."""
    head = arm.rsplit("-e", 1)[0]
    return head.split(".", 1)[1] if "." in head else None


def study_params(q: Q1) -> dict:
    """The study's params a run logs and resumes by (the pilot's are the pilot runs' own)."""
    return flatten_dict({k: v for k, v in dataclasses.asdict(q).items() if k != "pilot"}, "q1.")


# ---------------------------------------------------------------- stages

def cache(p: Params, q: Q1, name: str) -> dict:
    """The logit cache of the teacher ``name`` (one of ``q1.cached``)."""
    from kdlab.pipeline.cache import run_study_cache  # here: the students never import the cache's writer

    return run_study_cache(with_overrides(p, overrides(q)), subset(q), name, teacher_file(name, q), REBUILD,
                           CACHES / f"{name}.pt",
                           CACHE_METRICS / f"{name}.json", TESTS / f"teacher.{name}.json")


def student_spec(p: Params, q: Q1, method: str, teacher: str | None, width: float, epochs: int,
                 seed: int) -> RunSpec:
    cls = distill.method_class(method)
    if (cls.uses_teacher_logits or cls.uses_teacher_model) == (teacher is None):
        raise io.StageError(f"{method}: {'give' if teacher is None else 'no'} teacher")
    name = student_name(method, teacher, width, epochs, seed)
    about = (f"Question 1: {q.student.arch} x{width} for {epochs} epochs on {q.train_images} training images, "
             f"{'from teacher `' + teacher + '`' if teacher else 'labels only'}. ")
    record = {"method": method, "teacher": teacher, "arch": q.student.arch, "width": width, "epochs": epochs,
              "seed": seed}
    return RunSpec(
        name, "student", ModelParams(q.student.arch, width, epochs, q.student.lr, seed, "auto"), seed,
        LAYOUT.student_files(name), method,
        teacher=Source(teacher_file(teacher, q), REBUILD) if teacher else None,
        teacher_model=q.teachers[teacher_source(q, teacher)[0]] if cls.uses_teacher_model else None,
        cache=Source(CACHES / f"{teacher}.pt", REBUILD) if cls.uses_teacher_logits else None, subset=subset(q),
        curve=TESTS / f"{name}.json", record=record, predictions=True,
        tags={"method": method, "arm": arm_name(method, teacher, epochs), "q1_teacher": teacher or "", "width": width,
              "epochs": epochs}, about=about,
        extra=study_params(q), overrides=overrides(q))


def students(q: Q1) -> list[tuple[str, str | None, float, int]]:
    """(method, teacher, width, epochs) of every arm of the study (studies/q1/dvc.yaml's stages), each over
    q1.seeds."""
    w = q.student.width
    out = [(m, None, w, e) for m in ("raw", *q.labels) for e in q.budgets]
    out += [(v, q.teacher, w, e) for v in q.methods for e in q.budgets]
    out += [("raw", None, w, e) for e in q.long.budgets]
    out += [(m, None, w, q.long.epochs) for m in q.long.labels]
    out += [(v, q.teacher, w, q.long.epochs) for v in q.long.methods]
    out += [("kd", t, w, q.quality_epochs) for t in q.quality]
    out += [(v, q.control_teacher, w, q.quality_epochs) for v in q.controls]
    return list(dict.fromkeys(out))


def runs(p: Params, q: Q1) -> dict[str, Callable[[], RunSpec]]:
    """Every training run of the study, by name (its model file or folder under models/q1/, without ``.pt``)."""
    out = {f"teachers/{name}": partial(teacher_spec, q, name, LAYOUT, study_params(q), overrides(q))
           for name in q.teachers}
    for v, t, width, epochs in students(q):
        for seed in q.seeds:
            out[f"students/{student_name(v, t, width, epochs, seed)}"] = partial(student_spec, p, q, v, t, width,
                                                                                epochs, seed)
    return out


def question(q: Q1, rec: dict) -> int:
    """The question a run of the study answers (its spec: :func:`kdlab.pipeline.spec.record`): question 1's."""
    return 1


def cache_teachers(q: Q1) -> list[str]:
    """The teachers ``kdlab cache --study ... --teacher T`` takes."""
    return list(q.cached)


#: the stages the study has besides ``train`` (``kdlab cache --study studies/q1/params.yaml --teacher main``)
#: (its report: :func:`kdlab.analysis.q1_report.report`)
STAGES = {"cache": cache, "report": None}
