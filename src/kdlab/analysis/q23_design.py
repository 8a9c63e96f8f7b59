"""Questions 2 and 3 with their controls, the named study in ``studies/q23`` (``make q23``): which knowledge
transfers, do the teacher's weights or its outputs carry the gain, and what can be pruned while distilling.

Its params are ``studies/q23/params.yaml`` (section ``q23``, checked by :func:`load`); data, views, the cache's
views, ``train.*``, ``loss.*`` and ``methods.*`` are the default study's (params.yaml). Like question 1's study
(:mod:`kdlab.analysis.q1_design`) every run trains on a seeded subset of the training split and chooses its checkpoint on a
seeded subset of the validation split. It trains its own teachers: ``q23.teacher`` is distilled from, and
``q23.reference`` (the same architecture, another seed) is CKA's reference point.

Every run trains with ``q23.recipe`` (question 1's pilot-adopted recipe: its lr, schedule, batch, weight average
and cached views). This module is the study's design: its params (:class:`Q23`), its runs and the arguments of its
stages (``kdlab train --study studies/q23/params.yaml RUN``, ``kdlab cache | prune | cka | report --study
studies/q23/params.yaml``; the report is :mod:`kdlab.analysis.q23_report`), the runs named as :func:`runs` lists
them:

- ``train teachers/RUN``, ``cache``: as question 1's (the cache is ``q23.teacher``'s).
- ``train students/GROUP-sS`` (:class:`Group`, :func:`groups`): arm ``A`` (``q23.arms``: a method and its option
  overrides) from random weights, from the teacher's carved blocks ``q23.keep`` (``carved``), from a pruned teacher
  (``pruned``) or from its shape freshly initialised (``shape``), for ``q23.epochs`` or, matching the total SGD
  steps of a student that starts from the teacher (:func:`matched_epochs`), for more.
- ``prune``: the pruned teachers the students start from (:func:`kdlab.pipeline.cuts.run_prune`): every size of ``q23.prune.sizes`` by
  the iterative route (the trade-off curve) and every criterion one-shot at ``q23.prune.criteria_size``, each
  recalibrated (BatchNorm statistics of its own), with why pruned teachers start at chance (blocks, channels
  scored on the full or on the carved network) measured on validation before and after recalibration.
- ``cka``: linear CKA with the teacher per stage, biased and unbiased (:mod:`kdlab.core.cka`), for the
  reference teacher and every student of the transfer, selective and carved groups.

Every file is tensors or plain data (:func:`kdlab.infra.io.load_torch`, JSON).
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial
from pathlib import Path
from typing import Callable

from kdlab import distill
from kdlab.infra.schema import ParamsError, choice, flatten_dict, no_duplicates, positive
from kdlab.pipeline.cuts import Cutting, Prune, cut_name, pruned_file
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

LAYOUT = Layout("q23")
STUDY = LAYOUT.params
REBUILD = LAYOUT.rebuild
METRICS = LAYOUT.metrics
CACHE = LAYOUT.data / "logits.pt"
PRUNE_JSON = METRICS / "prune.json"
CKA_JSON = METRICS / "cka.json"


@dataclasses.dataclass(frozen=True)
class Arm:
    """A way to train a student: a distillation method (``raw``: labels only) and overrides of its
    ``methods.<name>`` options."""
    method: str = "raw"
    options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Collapse:
    """A run has collapsed when its final validation accuracy is more than ``below_median`` points under its
    arm's median, or under ``floor`` points: counted and reported, its seed left out of its arm's comparisons."""
    below_median: float = 10.0
    floor: float = 50.0


@dataclasses.dataclass(frozen=True)
class Matched:
    """The epochs from random weights that match the total SGD steps of a student starting from the teacher's
    weights (:func:`matched_epochs`; declared, so that stage names hold them, and checked)."""
    carved: int = 60
    pruned: int = 66


@dataclasses.dataclass(frozen=True)
class Group:
    """A group of student runs, one per seed: arm ``arm`` from initialisation ``init`` (``random``, ``carved``,
    ``pruned``: the pruned teacher ``cut``, ``shape``: its shape freshly initialised) for ``epochs`` epochs."""
    arm: str
    init: str
    epochs: int
    cut: str | None = None
    seeds: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        """``kd.random-e30``, ``kd.pruned-l1-it-x0.5-e30``: what the families and the report call the group."""
        return f"{self.arm}.{self.init}" + (f"-{self.cut}" if self.cut else "") + f"-e{self.epochs}"


@dataclasses.dataclass(frozen=True)
class Q23:
    train_images: int = 5000
    val_images: int = 2000
    subset_seed: int = 0
    #: the training recipe of every run and of the cache (question 1's adopted pilot recipe)
    recipe: Recipe = Recipe()
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    #: the seeds of the trade-off curve's arms (those that are not also in a family over ``seeds``)
    curve_seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    teachers: dict[str, TeacherRun] = dataclasses.field(default_factory=dict)
    #: the teacher distilled from (and carved, and pruned)
    teacher: str = "a"
    #: the same architecture from another seed: what CKA between two teachers is
    reference: str = "b"
    student: StudentSpec = StudentSpec()
    #: every student's epochs from its start (the end of its schedule), except the compute-matched arms'
    epochs: int = 30
    arms: dict[str, Arm] = dataclasses.field(default_factory=dict)
    #: question 2 (what knowledge transfers): arms trained from random weights
    transfer: list[str] = dataclasses.field(default_factory=list)
    #: question 3b (selective distillation): arms trained from random weights
    selective: list[str] = dataclasses.field(default_factory=list)
    #: arms also trained from the carved teacher, and from random weights for the teacher's epochs plus theirs
    carved: list[str] = dataclasses.field(default_factory=list)
    keep: list[list[int]] = dataclasses.field(default_factory=list)
    prune: Prune = Prune()
    matched: Matched = Matched()
    #: the smallest effect of interest and the equivalence margin (TOST), points
    effect: float = 0.5
    collapse: Collapse = Collapse()
    #: declared before the runs: ``A - B`` of two groups (:attr:`Group.name`), paired over the seeds both ran;
    #: Holm within each family
    families: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    cka_images: int = 1000
    #: training images each student's method sees before training (fitnet_select ranks channels on them)
    calibration_images: int = 1000

    def check(self) -> None:
        check_study("q23", self)
        positive("q23.epochs", self.epochs)
        positive("q23.calibration_images", self.calibration_images)
        positive("q23.effect", self.effect)
        positive("q23.collapse.below_median", self.collapse.below_median)
        positive("q23.collapse.floor", self.collapse.floor, strict=False)
        no_duplicates("q23.curve_seeds", self.curve_seeds)
        if not self.curve_seeds or len(self.curve_seeds) < 2:
            raise ParamsError("q23.curve_seeds", "at least two: the curve has intervals")
        check_recipe(self.recipe, "q23.recipe")
        for key, lr in [*((f"q23.teachers.{n}.lr", t.lr) for n, t in self.teachers.items()),
                        ("q23.student.lr", self.student.lr)]:
            if lr != self.recipe.lr:
                raise ParamsError(key, f"{lr} is not q23.recipe.lr {self.recipe.lr}: the recipe's lr is every run's")
        for key in ("teacher", "reference"):
            if getattr(self, key) not in self.teachers:
                raise ParamsError(f"q23.{key}", f"{getattr(self, key)!r} is not in q23.teachers {sorted(self.teachers)}")
        a, b = self.teachers[self.teacher], self.teachers[self.reference]
        if (a.arch, a.width) != (b.arch, b.width) or self.teacher == self.reference:
            raise ParamsError("q23.reference", "must be another run of q23.teacher's architecture and width")
        for name, arm in self.arms.items():
            choice(f"q23.arms.{name}.method", arm.method, distill.names())
        for key in ("transfer", "selective", "carved"):
            no_duplicates(f"q23.{key}", getattr(self, key))
            for name in getattr(self, key):
                if name not in self.arms:
                    raise ParamsError(f"q23.{key}", f"{name!r} is not in q23.arms {sorted(self.arms)}")
        if missing := [a for a in self.carved if a not in self.transfer]:
            raise ParamsError("q23.carved", f"{missing}: each must also be in q23.transfer (its random-weight twin)")
        for needed in ("raw", "kd"):
            if needed not in self.transfer:
                raise ParamsError("q23.transfer", f"must include {needed!r}: the curve and every table compare "
                                  f"against it")
        self.prune.check("q23.prune")
        if self.cka_images < 4:  # the unbiased CKA's U-statistic needs n > 3
            raise ParamsError("q23.cka_images", f"at least 4 images, got {self.cka_images}")
        for init in ("carved", "pruned"):
            if getattr(self.matched, init) != matched_epochs(self, init):
                raise ParamsError(f"q23.matched.{init}", f"{getattr(self.matched, init)}: the steps of a student from "
                                  f"{init} weights, its teacher's and pruning's included, are "
                                  f"{matched_epochs(self, init)} epochs")
        names = [g.name for g in groups(self)]
        no_duplicates("q23 (its student groups)", names)
        known = set(names)
        for fam, comparisons in self.families.items():
            if not comparisons:
                raise ParamsError(f"q23.families.{fam}", "at least one comparison")
            no_duplicates(f"q23.families.{fam}", comparisons)
            for c in comparisons:
                a, _, b = c.partition(" - ")
                if a not in known or b not in known or a == b:
                    raise ParamsError(f"q23.families.{fam}", f"{c!r} is not `A - B` of two groups of the study "
                                      f"({', '.join(sorted(known))})")


def load(path: Path = STUDY) -> Q23:
    return load_section(path, "q23", Q23)


def study_params(q: Q23) -> dict:
    return flatten_dict(dataclasses.asdict(q), "q23.")


def teacher_file(name: str) -> Path:
    return LAYOUT.teachers / name / "final.pt"


def cutting(q: Q23) -> Cutting:
    """What the study's ``prune`` stage prunes and where it writes (:func:`kdlab.pipeline.cuts.run_prune`)."""
    return Cutting(teacher_file(q.teacher), q.teachers[q.teacher].seed, subset(q),
                   ModelParams(q.student.arch, q.student.width, 1, q.student.lr, 0, "auto"), q.keep, CACHE,
                   LAYOUT.models / "pruned", PRUNE_JSON, REBUILD, "q23.prune", "q23.keep")


def steps_per_epoch(q: Q23) -> int:
    return math.ceil(q.train_images / q.recipe.batch_size)


def matched_epochs(q: Q23, init: str) -> int:
    """The epochs a student from random weights trains to match the total SGD steps of one that starts from the
    teacher (``carved``) or from a pruned teacher (``pruned``): the teacher's epochs (the same batches), the
    pruning's KD steps between its steps (rounded up to epochs), and the student's."""
    extra = 0
    if init == "pruned":
        extra = math.ceil((q.prune.steps - 1) * q.prune.finetune_steps / steps_per_epoch(q))
    return q.teachers[q.teacher].epochs + extra + q.epochs


def groups(q: Q23) -> list[Group]:
    """Every student group the study trains, with its seeds."""
    e, pr, seeds, curve = q.epochs, q.prune, tuple(q.seeds), tuple(q.curve_seeds)
    out = [Group(a, "random", e, None, seeds) for a in q.transfer + q.selective]
    out += [Group(a, "carved", e, None, seeds) for a in q.carved]
    out += [Group(a, "random", q.matched.carved, None, seeds) for a in q.carved]
    out += [Group("kd", "pruned", e, cut_name(c, pr.criteria_size, False), seeds) for c in pr.criteria]
    for size in pr.sizes:
        cut = cut_name(pr.iterative, size, True)
        out += [Group("kd", "pruned", e, cut, curve), Group("kd", "shape", q.matched.pruned, cut, curve),
                Group("raw", "shape", q.matched.pruned, cut, curve)]
    out.append(Group("kd", "shape", e, cut_name(pr.iterative, pr.criteria_size, True), curve))
    return out


def student_name(group: Group, seed: int) -> str:
    """``kd.random-e30-s0``: the group's name and the seed."""
    return f"{group.name}-s{seed}"


def recipe_params(p: Params, q: Q23) -> Params:
    """The params every run, the cache and the pruning of the study train with: the default study's, the
    recipe's ``train.*`` and ``cache.views`` set."""
    return with_overrides(p, q.recipe.overrides())


# ---------------------------------------------------------------- teachers, the cache, students

def cache(p: Params, q: Q23) -> dict:
    """The teacher's logit cache (``q23.teacher``: the study has one)."""
    from kdlab.pipeline.cache import run_study_cache  # here: the students never import the cache's writer

    return run_study_cache(recipe_params(p, q), subset(q), q.teacher, teacher_file(q.teacher), REBUILD, CACHE,
                           METRICS / "cache.json", METRICS / "teacher_test.json")


def student_spec(p: Params, q: Q23, group: Group, seed: int) -> RunSpec:
    arm = q.arms[group.arm]
    name = student_name(group, seed)
    start = {"random": "random weights", "carved": f"the teacher's blocks {q.keep}",
             "pruned": f"the pruned teacher {group.cut}", "shape": f"the shape of the pruned teacher {group.cut}, "
             f"freshly initialised"}[group.init]
    about = (f"Questions 2 and 3: arm `{group.arm}` ({arm.method}, {arm.options or 'default options'}) from {start}, "
             f"{group.epochs} epochs on {q.train_images} training images. ")
    return RunSpec(
        name, "student", ModelParams(q.student.arch, q.student.width, group.epochs, q.student.lr, seed, "auto"), seed,
        LAYOUT.student_files(name), arm.method, dict(arm.options), group.init,
        blocks=q.keep, pruned=Source(pruned_file(cutting(q), group.cut), REBUILD) if group.cut else None,
        teacher=Source(teacher_file(q.teacher), REBUILD), teacher_model=q.teachers[q.teacher],
        cache=Source(CACHE, REBUILD), subset=subset(q), calibration_images=q.calibration_images,
        tags={"method": arm.method, "arm": group.name, "q23_arm": group.arm,
              "init": group.init, "epochs": group.epochs, **({"cut": group.cut} if group.cut else {})},
        about=about, extra=study_params(q), overrides=q.recipe.overrides())


def runs(p: Params, q: Q23) -> dict[str, Callable[[], RunSpec]]:
    """Every training run of the study, by name (its model file or folder under models/q23/, without ``.pt``)."""
    out = {f"teachers/{name}": partial(teacher_spec, q, name, LAYOUT, study_params(q), q.recipe.overrides())
           for name in q.teachers}
    for g in groups(q):
        for seed in g.seeds:
            out[f"students/{student_name(g, seed)}"] = partial(student_spec, p, q, g, seed)
    return out


# ---------------------------------------------------------------- the study's stages (kdlab COMMAND --study)

def prune(p: Params, q: Q23) -> dict:
    """The pruned teachers the students start from, and why pruned teachers start at chance."""
    from kdlab.pipeline.cuts import run_prune

    return run_prune(recipe_params(p, q), q.prune, cutting(q))


def cka(p: Params, q: Q23) -> dict:
    """metrics/q23/cka.json: per stage, CKA (biased and unbiased) with ``q23.teacher`` on the first
    ``q23.cka_images`` validation images, for the reference teacher and every student of the transfer, selective
    and carved groups."""
    from kdlab.pipeline.similarity import run_cka

    chosen = {g.name: {student_name(g, seed): LAYOUT.student_files(student_name(g, seed))[0] for seed in g.seeds}
              for g in groups(q) if g.init in ("random", "carved") and g.epochs == q.epochs}
    return run_cka(recipe_params(p, q), subset(q), q.cka_images, teacher_file(q.teacher), teacher_file(q.reference),
                   chosen, REBUILD, CKA_JSON)


def question(q: Q23, rec: dict) -> int:
    """The question a run of the study answers (its spec: :func:`kdlab.pipeline.spec.record`): 3 for what
    starts from a pruned teacher (or its shape) or selects the teacher's features, 2 for the rest (teachers
    included)."""
    return 3 if rec["init"] in ("pruned", "shape") or rec["tags"].get("q23_arm") in q.selective else 2


#: the stages the study has besides ``train`` (``kdlab cache --study studies/q23/params.yaml``)
#: (its report: :func:`kdlab.analysis.q23_report.report`)
STAGES = {"cache": lambda p, q, teacher: cache(p, q), "prune": prune, "cka": cka, "report": None}
