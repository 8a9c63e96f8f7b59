"""Questions 2 and 3 with their controls, the named study in ``studies/q23`` (``make q23``): which knowledge
transfers, do the teacher's weights or its outputs carry the gain, and what can be pruned while distilling.

Its params are ``studies/q23/params.yaml`` (section ``q23``, checked by :func:`load`); data, views, the cache's
views, ``train.*``, ``loss.*`` and ``methods.*`` are the default study's (params.yaml). Like question 1's study
(:mod:`kdlab.pipeline.q1`) every run trains on a seeded subset of the training split and chooses its checkpoint on a
seeded subset of the validation split. It trains its own teachers: ``q23.teacher`` is distilled from, and
``q23.reference`` (the same architecture, another seed) is CKA's reference point.

Every run trains with ``q23.recipe`` (question 1's pilot-adopted recipe: its lr, schedule, batch, weight average
and cached views). Stages (``kdlab train --study studies/q23/params.yaml RUN``, ``kdlab q23_cache | q23_prune |
q23_cka``; ``q23_report`` is :mod:`kdlab.analysis.q23_report`), the runs named as :func:`runs` lists them:

- ``train teachers/RUN``, ``q23_cache``: as question 1's (the cache is ``q23.teacher``'s).
- ``train students/GROUP-sS`` (:class:`Group`, :func:`groups`): arm ``A`` (``q23.arms``: a method and its option
  overrides) from random weights, from the teacher's carved blocks ``q23.keep`` (``carved``), from a pruned teacher
  (``pruned``) or from its shape freshly initialised (``shape``), for ``q23.epochs`` or, matching the total SGD
  steps of a student that starts from the teacher (:func:`matched_epochs`), for more.
- ``q23_prune``: the pruned teachers the students start from (:func:`cuts`): every size of ``q23.prune.sizes`` by
  the iterative route (the trade-off curve) and every criterion one-shot at ``q23.prune.criteria_size``, each
  recalibrated (BatchNorm statistics of its own), with why pruned teachers start at chance (blocks, channels
  scored on the full or on the carved network) measured on validation before and after recalibration.
- ``q23_cka``: linear CKA with the teacher per stage, biased and unbiased (:mod:`kdlab.core.cka`), for the
  reference teacher and every student of the transfer, selective and carved groups.

Every file is tensors or plain data (:func:`kdlab.infra.io.load_torch`, JSON).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kdlab import distill
from kdlab.core.train import accuracy, kd_finetuner, predict
from kdlab.infra import io
from kdlab.infra.schema import ParamsError, build, choice, flatten_dict, no_duplicates, positive, read_yaml
from kdlab.pipeline.params import PRUNE_CRITERIA, ModelParams, Params, with_overrides
from kdlab.pipeline.spec import RunSpec, Source
from kdlab.pipeline.study import Recipe, StudentSpec, TeacherRun, check_recipe, check_study, subset, teacher_spec
from kdlab.pipeline.workspace import build_model, context, model_from_checkpoint

STUDY = Path("studies/q23/params.yaml")
REBUILD = f"dvc repro {STUDY.parent / 'dvc.yaml'}"
TEACHERS = Path("models/q23/teachers")
STUDENTS = Path("models/q23/students")
PRUNED = Path("models/q23/pruned")
CACHE = Path("data/q23/logits.pt")
METRICS = Path("metrics/q23")
PRUNE_JSON = METRICS / "prune.json"
CKA_JSON = METRICS / "cka.json"
#: the param a pruning that cannot reach its target is blamed on
MAX_RATIO = "q23.prune.max_ratio"


@dataclasses.dataclass(frozen=True)
class Arm:
    """A way to train a student: a distillation method (``raw``: labels only) and overrides of its
    ``methods.<name>`` options."""
    method: str = "raw"
    options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Prune:
    #: the trade-off curve: pruned teachers of these sizes, multiples of the student's parameter count, each by
    #: the iterative route (``iterative``, ``steps`` pruning steps with ``finetune_steps`` KD steps between)
    sizes: list[float] = dataclasses.field(default_factory=lambda: [0.25, 0.5, 1.0, 1.5])
    #: the size at which the criteria are compared, each pruned one-shot
    criteria_size: float = 1.0
    criteria: list[str] = dataclasses.field(default_factory=lambda: ["l1", "taylor", "activation", "random"])
    #: the size at which channels scored on the carved network meet channels scored on the full one (diagnosis)
    small: float = 0.5
    iterative: str = "l1"
    steps: int = 4
    finetune_steps: int = 100
    calibration_images: int = 512
    #: training images whose batch statistics replace the BatchNorm running statistics
    recalibration_images: int = 2000
    max_ratio: float = 0.9


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
        pr = self.prune
        for c in pr.criteria + [pr.iterative]:
            choice("q23.prune.criteria", c, PRUNE_CRITERIA)
        if not pr.sizes:
            raise ParamsError("q23.prune.sizes", "at least one size")
        no_duplicates("q23.prune.sizes", pr.sizes)
        for v in (*pr.sizes, pr.criteria_size, pr.small):
            positive("q23.prune.sizes", v)
        positive("q23.prune.steps", pr.steps)
        positive("q23.prune.finetune_steps", pr.finetune_steps, strict=False)
        positive("q23.prune.calibration_images", pr.calibration_images)
        positive("q23.prune.recalibration_images", pr.recalibration_images)
        if not 0 < pr.max_ratio < 1:
            raise ParamsError(MAX_RATIO, f"the largest fraction of a convolution's channels pruned: in (0, 1), got "
                              f"{pr.max_ratio}")
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
    raw = read_yaml(Path(path)) or {}
    if set(raw) != {"q23"}:
        raise ParamsError(str(path), "must hold exactly one section, q23")
    q = build(Q23, raw["q23"], "q23")
    q.check()
    return q


def study_params(q: Q23) -> dict:
    return flatten_dict(dataclasses.asdict(q), "q23.")


def teacher_file(name: str) -> Path:
    return TEACHERS / name / "final.pt"


def size_name(size: float) -> str:
    """``x0.25``, ``x1.0``: as DVC writes the size into a stage's command."""
    return f"x{float(size)}"


def cut_name(criterion: str, size: float, iterative: bool) -> str:
    """``l1-it-x0.5``: the pruned teacher of ``size`` student parameter counts by the iterative route with
    ``l1``; ``taylor-x1.0``: one-shot by ``taylor``."""
    return f"{criterion}{'-it' if iterative else ''}-{size_name(size)}"


def pruned_file(cut: str) -> Path:
    return PRUNED / f"{cut}.pt"


def cuts(q: Q23) -> list[str]:
    """Every pruned teacher q23_prune saves: the curve's (iterative) and the criteria's (one-shot)."""
    pr = q.prune
    out = [cut_name(pr.iterative, s, True) for s in pr.sizes]
    out += [cut_name(c, pr.criteria_size, False) for c in pr.criteria]
    return list(dict.fromkeys(out))


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


def report_inputs(q: Q23) -> dict:
    """What ``q23_report`` reads (:func:`kdlab.analysis.q23_report.run_q23_report`): every student run and the study's files."""
    runs = [{"name": student_name(g, seed), "group": g.name, "arm": g.arm, "init": g.init, "epochs": g.epochs,
             "cut": g.cut, "seed": seed} for g in groups(q) for seed in g.seeds]
    return {"runs": runs, "metrics": METRICS, "rebuild": REBUILD}


def load_teacher_model(ctx, name: str) -> tuple[dict, nn.Module]:
    ckpt = io.load_torch(teacher_file(name), REBUILD)
    return ckpt, model_from_checkpoint(ckpt, ctx)


def recipe_params(p: Params, q: Q23) -> Params:
    """The params every run, the cache and the pruning of the study train with: the default study's, the
    recipe's ``train.*`` and ``cache.views`` set."""
    return with_overrides(p, q.recipe.overrides())


# ---------------------------------------------------------------- teachers, the cache, students

def run_q23_cache(p: Params, q: Q23) -> dict:
    from kdlab.pipeline.cache import run_study_cache  # here: the students never import the cache's writer

    return run_study_cache(recipe_params(p, q), subset(q), q.teacher, teacher_file(q.teacher), REBUILD, CACHE,
                           METRICS / "cache.json", METRICS / "teacher_test.json")


def student_spec(p: Params, q: Q23, group: Group, seed: int) -> RunSpec:
    arm = q.arms[group.arm]
    if distill.method_class(arm.method).builds_from_teacher:
        raise io.StageError(f"q23.arms.{group.arm}: {arm.method} builds its student; the study's init does that")
    name = student_name(group, seed)
    start = {"random": "random weights", "carved": f"the teacher's blocks {q.keep}",
             "pruned": f"the pruned teacher {group.cut}", "shape": f"the shape of the pruned teacher {group.cut}, "
             f"freshly initialised"}[group.init]
    about = (f"Questions 2 and 3: arm `{group.arm}` ({arm.method}, {arm.options or 'default options'}) from {start}, "
             f"{group.epochs} epochs on {q.train_images} training images. ")
    return RunSpec(
        name, "student", ModelParams(q.student.arch, q.student.width, group.epochs, q.student.lr, seed, "auto"), seed,
        (STUDENTS / f"{name}.pt", METRICS / "students" / f"{name}.json"), arm.method, dict(arm.options), group.init,
        blocks=q.keep, pruned=Source(pruned_file(group.cut), REBUILD) if group.cut else None,
        teacher=Source(teacher_file(q.teacher), REBUILD), teacher_model=q.teachers[q.teacher],
        cache=Source(CACHE, REBUILD), subset=subset(q), calibration_images=q.calibration_images,
        tags={"variant": group.arm, "q23_arm": group.arm, "q23_group": group.name, "method": arm.method,
              "init": group.init, "epochs": group.epochs, **({"cut": group.cut} if group.cut else {})},
        about=about, extra=study_params(q), overrides=q.recipe.overrides())


def runs(p: Params, q: Q23) -> dict[str, Callable[[], RunSpec]]:
    """Every training run of the study, by name (its model file or folder under models/q23/, without ``.pt``)."""
    out = {f"teachers/{name}": partial(teacher_spec, q, name, TEACHERS / name, METRICS / "teachers", "q23",
                                       study_params(q), q.recipe.overrides()) for name in q.teachers}
    for g in groups(q):
        for seed in g.seeds:
            out[f"students/{student_name(g, seed)}"] = partial(student_spec, p, q, g, seed)
    return out


# ---------------------------------------------------------------- why pruned teachers start at chance

@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are the average over ``images`` (normalised) of
    its batch statistics in training mode: what a pruned network's statistics are, instead of the teacher's."""
    m = copy.deepcopy(model)
    bns = [x for x in m.modules() if isinstance(x, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the batches
    m.train()
    for start in range(0, len(images), batch_size):
        m(images[start:start + batch_size])
    for bn, mom in zip(bns, momenta):
        bn.momentum = mom
    return m.eval()


def run_q23_prune(p: Params, q: Q23) -> dict:
    from kdlab.core import channels
    from kdlab.core.models import count_params
    from kdlab.core.surgery import keep_blocks

    p = recipe_params(p, q)
    t = q.teachers[q.teacher]
    ctx = context(p, t.seed, subset(q))
    ckpt, teacher = load_teacher_model(ctx, q.teacher)
    train, val = ctx.splits["train"], ctx.splits["val"]
    pr = q.prune
    calib = (ctx.normalize(train["images"][:pr.calibration_images].to(ctx.device)),
             train["labels"][:pr.calibration_images].to(ctx.device))
    recal_images = ctx.normalize(train["images"][:pr.recalibration_images].to(ctx.device))
    unit = count_params(build_model(ModelParams(q.student.arch, q.student.width, 1, q.student.lr, 0, "auto"), ctx))

    def target(size: float) -> int:
        return round(size * unit)

    def val_acc(model) -> float:
        return accuracy(predict(model, val["images"], val["labels"], ctx.normalize, p.train.eval_batch_size,
                                p.train.precision), val["labels"])

    rows = {}

    def measure(name, model, route, criterion, scored_on, histories=None):
        recal = recalibrate_bn(model, recal_images)
        rows[name] = {"route": route, "criterion": criterion, "scored_on": scored_on, "params": count_params(model),
                      "val_acc": val_acc(model), "val_acc_recalibrated": val_acc(recal)}
        if histories is not None:  # a start of pruned students: saved recalibrated
            io.save_torch({"arch": ckpt["arch"], "width": ckpt["width"], "in_channels": ckpt["in_channels"],
                           "classes": ckpt["classes"], "blocks": None, "pruning": histories,
                           "state_dict": recal.state_dict(), "cut": name, **rows[name]}, pruned_file(name))
        print(f"{name}: {rows[name]['params']:,} parameters, val {rows[name]['val_acc']:.4f}, after BatchNorm "
              f"recalibration {rows[name]['val_acc_recalibrated']:.4f}")

    measure("teacher", teacher, "none", None, None)
    # why pruned teachers start at chance: blocks carved, channels scored on the carved or on the full network
    carved = keep_blocks(teacher, q.keep, "q23.keep")
    measure("blocks", carved, "blocks", None, None)
    for c in pr.criteria:
        m, _, _ = channels.prune_to(carved, c, target(pr.small), calib, pr.max_ratio, seed=t.seed, key=MAX_RATIO)
        measure(f"blocks+channels.{c}-{size_name(pr.small)}", m, "blocks, then channels", c, "carved")
        m, _, _ = channels.prune_to(teacher, c, target(pr.small), calib, pr.max_ratio, seed=t.seed, key=MAX_RATIO,
                                    transform=lambda pruned: keep_blocks(pruned, q.keep, "q23.keep"))
        measure(f"channels+blocks.{c}-{size_name(pr.small)}", m, "channels, then blocks", c, "full")
    # the criteria at one size, one-shot
    for c in pr.criteria:
        m, hist, _ = channels.prune_to(teacher, c, target(pr.criteria_size), calib, pr.max_ratio, seed=t.seed,
                                       key=MAX_RATIO)
        measure(cut_name(c, pr.criteria_size, False), m, "channels, one-shot", c, "full", [hist])
    # the curve: every size by the iterative route, KD from the cached logits between its steps
    from kdlab.pipeline.cache import cached_batches

    kd_batches = cached_batches(p, ctx, CACHE, REBUILD, teacher_file(q.teacher), t.seed, subset(q))
    for size in pr.sizes:
        between = kd_finetuner(distill.build("kd", p), kd_batches, pr.finetune_steps, q.student.lr, p.train,
                               ctx.device, ctx.precision)
        m, histories = channels.prune_iteratively(teacher, pr.iterative, target(size), calib, pr.steps, between,
                                                  pr.max_ratio, seed=t.seed)
        measure(cut_name(pr.iterative, size, True), m, f"channels, {pr.steps} steps with KD between", pr.iterative,
                "full", histories)
    out = {"student_params": unit, "targets": {size_name(s): target(s) for s in {*pr.sizes, pr.criteria_size,
                                                                                   pr.small}},
           "cuts": cuts(q), "models": rows}
    io.save_json(out, PRUNE_JSON)
    return out


# ---------------------------------------------------------------- CKA

def run_q23_cka(p: Params, q: Q23) -> dict:
    """metrics/q23/cka.json: per stage, CKA (biased and unbiased) with ``q23.teacher`` on the first
    ``q23.cka_images`` validation images, for the reference teacher and every student of the transfer, selective
    and carved groups."""
    from kdlab.core import cka
    from kdlab.core.features import features, layers

    ctx = context(recipe_params(p, q), 0, subset(q))
    images = ctx.normalize(ctx.splits["val"]["images"][:q.cka_images].to(ctx.device))
    _, teacher = load_teacher_model(ctx, q.teacher)
    paths = layers(teacher)
    t_feats = features(teacher, images, paths)

    def profile(model) -> dict:
        return cka.profile(model, images, paths, t_feats)

    _, ref = load_teacher_model(ctx, q.reference)
    out = {"images": len(images), "stages": paths, "reference": profile(ref), "students": {}}
    for g in groups(q):
        if g.init not in ("random", "carved") or g.epochs != q.epochs:
            continue
        for seed in g.seeds:
            name = student_name(g, seed)
            out["students"][name] = profile(model_from_checkpoint(io.load_torch(STUDENTS / f"{name}.pt", REBUILD),
                                                                  ctx))
        print(f"{g.name}: CKA done")
    io.save_json(out, CKA_JSON)
    return out
