"""Questions 2 and 3 with their controls, the named study in ``studies/q23`` (``make q23``): which knowledge
transfers, do the teacher's weights or its outputs carry the gain, and what can be pruned while distilling.

Its params are ``studies/q23/params.yaml`` (section ``q23``, checked by :func:`load`); data, views, the cache's
views, ``train.*``, ``loss.*`` and ``methods.*`` are the default study's (params.yaml). Like question 1's study
(:mod:`kdlab.pipeline.q1`) every run trains on a seeded subset of the training split and chooses its checkpoint on a
seeded subset of the validation split. It trains its own teachers: ``q23.teacher`` is distilled from, and
``q23.reference`` (the same architecture, another seed) is CKA's reference point.

Stages (``kdlab train --study studies/q23/params.yaml RUN``, ``kdlab q23_cache | q23_prune | q23_cka``;
``q23_report`` is :mod:`kdlab.analysis.q23_report`), the runs named as :func:`runs` lists them:

- ``train teachers/RUN``, ``q23_cache``: as question 1's (the cache is ``q23.teacher``'s).
- ``train students/A.I-eE-sS``: the student trained with arm ``A`` (``q23.arms``: a
  method and its option overrides) from initialisation ``I``: ``random`` (``q23.student``), ``carved`` (the
  teacher's blocks ``q23.keep`` with their weights), ``pruned`` (the pruned teacher ``q23_prune`` chose) or
  ``shape`` (that shape, freshly initialised). It keeps the student's weights at the end of the epochs
  ``q23.snapshots`` (0: before training) for CKA through training.
- ``q23_prune``: why pruned teachers start at chance: each way of cutting the teacher down (blocks, channels
  scored on the full or on the carved network, one-shot or iterative with KD between steps) measured on
  validation before and after BatchNorm recalibration; the best-on-validation channel-pruned teacher at
  ``q23.prune.size`` is saved, recalibrated, for the ``pruned`` students.
- ``q23_cka``: linear CKA with the teacher per stage, biased and unbiased (:mod:`kdlab.core.cka`), for the
  reference teacher, every final student, and the snapshots.

Every file is tensors or plain data (:func:`kdlab.infra.io.load_torch`, JSON).
"""
from __future__ import annotations

import copy
import dataclasses
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kdlab import distill
from kdlab.core.train import accuracy, kd_finetuner, predict
from kdlab.infra import io
from kdlab.infra.schema import ParamsError, build, choice, flatten_dict, no_duplicates, positive, read_yaml
from kdlab.pipeline.params import PRUNE_CRITERIA, ModelParams, Params
from kdlab.pipeline.spec import RunSpec, Source
from kdlab.pipeline.study import StudentSpec, TeacherRun, check_study, subset, teacher_spec
from kdlab.pipeline.workspace import build_model, context, model_from_checkpoint

STUDY = Path("studies/q23/params.yaml")
REBUILD = f"dvc repro {STUDY.parent / 'dvc.yaml'}"
TEACHERS = Path("models/q23/teachers")
STUDENTS = Path("models/q23/students")
SNAPSHOTS = Path("models/q23/snapshots")
PRUNED = Path("models/q23/pruned/chosen.pt")
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
    #: the pruned teachers' size, a multiple of the student's parameter count (1.0: the student's own)
    size: float = 1.0
    #: the smaller size at which channels scored on the carved network meet channels scored on the full one
    small: float = 0.5
    criteria: list[str] = dataclasses.field(default_factory=lambda: ["l1", "taylor", "activation", "random"])
    #: the criterion of the iterative run (steps, with finetune_steps KD steps between them)
    iterative: str = "l1"
    steps: int = 4
    finetune_steps: int = 100
    calibration_images: int = 512
    #: training images whose batch statistics replace the BatchNorm running statistics
    recalibration_images: int = 2000
    max_ratio: float = 0.9


@dataclasses.dataclass(frozen=True)
class Q23:
    train_images: int = 5000
    val_images: int = 2000
    subset_seed: int = 0
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    teachers: dict[str, TeacherRun] = dataclasses.field(default_factory=dict)
    #: the teacher distilled from (and carved, and pruned)
    teacher: str = "a"
    #: the same architecture from another seed: what CKA between two teachers is
    reference: str = "b"
    student: StudentSpec = StudentSpec()
    #: every student's epochs (the matched budget), except the compute-matched arm's
    epochs: int = 10
    arms: dict[str, Arm] = dataclasses.field(default_factory=dict)
    #: item 1 (what knowledge transfers): arms trained from random weights
    transfer: list[str] = dataclasses.field(default_factory=list)
    #: item 4 (selective distillation): arms trained from random weights
    selective: list[str] = dataclasses.field(default_factory=list)
    #: item 2: arms also trained from the carved teacher (the 2x2 with their random-weight twins in transfer)
    carved: list[str] = dataclasses.field(default_factory=list)
    keep: list[list[int]] = dataclasses.field(default_factory=list)
    #: the compute-matched arm: ``kd`` from random weights for the teacher's epochs plus the students'
    matched_epochs: int = 40
    #: arms also trained from the pruned teacher and from its shape, freshly initialised
    pruned: list[str] = dataclasses.field(default_factory=list)
    prune: Prune = Prune()
    snapshots: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2, 5])
    cka_images: int = 1000
    #: training images each student's method sees before training (fitnet_select ranks channels on them)
    calibration_images: int = 1000

    def check(self) -> None:
        check_study("q23", self)
        positive("q23.epochs", self.epochs)
        positive("q23.calibration_images", self.calibration_images)
        for key in ("teacher", "reference"):
            if getattr(self, key) not in self.teachers:
                raise ParamsError(f"q23.{key}", f"{getattr(self, key)!r} is not in q23.teachers {sorted(self.teachers)}")
        a, b = self.teachers[self.teacher], self.teachers[self.reference]
        if (a.arch, a.width) != (b.arch, b.width) or self.teacher == self.reference:
            raise ParamsError("q23.reference", "must be another run of q23.teacher's architecture and width")
        for name, arm in self.arms.items():
            choice(f"q23.arms.{name}.method", arm.method, distill.names())
        for key in ("transfer", "selective", "carved", "pruned"):
            no_duplicates(f"q23.{key}", getattr(self, key))
            for name in getattr(self, key):
                if name not in self.arms:
                    raise ParamsError(f"q23.{key}", f"{name!r} is not in q23.arms {sorted(self.arms)}")
        for key in ("carved", "pruned"):
            if missing := [a for a in getattr(self, key) if a not in self.transfer]:
                raise ParamsError(f"q23.{key}", f"{missing}: each must also be in q23.transfer (its random-weight twin)")
        for needed in ("raw", "kd"):
            if needed not in self.transfer:
                raise ParamsError("q23.transfer", f"must include {needed!r}: every table compares against it")
        if self.matched_epochs <= self.epochs:
            raise ParamsError("q23.matched_epochs", f"{self.matched_epochs} must exceed q23.epochs ({self.epochs})")
        if any(not 0 <= e < self.epochs for e in self.snapshots):
            raise ParamsError("q23.snapshots", f"epochs before the last (0..{self.epochs - 1}): {self.snapshots}")
        for c in self.prune.criteria + [self.prune.iterative]:
            choice("q23.prune.criteria", c, PRUNE_CRITERIA)
        if not 0 < self.prune.small < self.prune.size:
            raise ParamsError("q23.prune.small", f"must be in (0, q23.prune.size={self.prune.size})")
        positive("q23.prune.steps", self.prune.steps)
        positive("q23.prune.finetune_steps", self.prune.finetune_steps, strict=False)
        positive("q23.prune.calibration_images", self.prune.calibration_images)
        positive("q23.prune.recalibration_images", self.prune.recalibration_images)
        if not 0 < self.prune.max_ratio < 1:
            raise ParamsError(MAX_RATIO, f"the largest fraction of a convolution's channels pruned: in (0, 1), got "
                              f"{self.prune.max_ratio}")
        if self.cka_images < 4:  # the unbiased CKA's U-statistic needs n > 3
            raise ParamsError("q23.cka_images", f"at least 4 images, got {self.cka_images}")


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


def student_name(arm: str, init: str, epochs: int, seed: int) -> str:
    """``kd.random-e10-s0``: arm ``kd`` from random weights, 10 epochs, seed 0."""
    return f"{arm}.{init}-e{epochs}-s{seed}"


def expected_students(q: Q23) -> list[tuple[str, str, int]]:
    """(arm, init, epochs) of every student group the study trains, each over q23.seeds."""
    out = [(a, "random", q.epochs) for a in q.transfer + q.selective]
    out += [(a, "carved", q.epochs) for a in q.carved]
    out += [("kd", "random", q.matched_epochs)]
    out += [(a, init, q.epochs) for a in q.pruned for init in ("pruned", "shape")]
    return list(dict.fromkeys(out))


def report_inputs(q: Q23) -> dict:
    """What ``q23_report`` reads (:func:`kdlab.analysis.q23_report.run_q23_report`): every student run and the study's files."""
    runs = [{"name": student_name(arm, init, epochs, seed), "arm": arm, "init": init, "epochs": epochs, "seed": seed}
            for arm, init, epochs in expected_students(q) for seed in q.seeds]
    return {"runs": runs, "metrics": METRICS, "rebuild": REBUILD}


def load_teacher_model(ctx, name: str) -> tuple[dict, nn.Module]:
    ckpt = io.load_torch(teacher_file(name), REBUILD)
    return ckpt, model_from_checkpoint(ckpt, ctx)


# ---------------------------------------------------------------- teachers, the cache, students

def run_q23_cache(p: Params, q: Q23) -> dict:
    from kdlab.pipeline.cache import run_study_cache  # here: the students never import the cache's writer

    return run_study_cache(p, subset(q), q.teacher, teacher_file(q.teacher), REBUILD, CACHE, METRICS / "cache.json",
                           METRICS / "teacher_test.json")


def student_spec(p: Params, q: Q23, arm_name: str, init: str, epochs: int, seed: int) -> RunSpec:
    arm = q.arms[arm_name]
    if distill.method_class(arm.method).builds_from_teacher:
        raise io.StageError(f"q23.arms.{arm_name}: {arm.method} builds its student; the study's --init does that")
    name = student_name(arm_name, init, epochs, seed)
    about = (f"Questions 2 and 3 with controls: arm `{arm_name}` ({arm.method}, {arm.options or 'default options'}) "
             f"from {init} weights, {epochs} epochs on {q.train_images} training images. ")
    return RunSpec(
        name, "student", ModelParams(q.student.arch, q.student.width, epochs, q.student.lr, seed, "auto"), seed,
        (STUDENTS / f"{name}.pt", METRICS / "students" / f"{name}.json"), arm.method, dict(arm.options), init,
        blocks=q.keep, pruned=Source(PRUNED, REBUILD), teacher=Source(teacher_file(q.teacher), REBUILD),
        teacher_model=q.teachers[q.teacher], cache=Source(CACHE, REBUILD), subset=subset(q),
        calibration_images=q.calibration_images, snapshots=tuple(q.snapshots) if epochs == q.epochs else (),
        snapshot_dir=SNAPSHOTS / name,
        tags={"variant": arm_name, "q23_arm": arm_name, "method": arm.method, "init": init, "epochs": epochs},
        about=about, extra=study_params(q))


def runs(p: Params, q: Q23) -> dict[str, Callable[[], RunSpec]]:
    """Every training run of the study, by name (its model file or folder under models/q23/, without ``.pt``)."""
    out = {f"teachers/{name}": partial(teacher_spec, q, name, TEACHERS / name, METRICS / "teachers", "q23",
                                       study_params(q)) for name in q.teachers}
    for arm, init, epochs in expected_students(q):
        for seed in q.seeds:
            out[f"students/{student_name(arm, init, epochs, seed)}"] = partial(student_spec, p, q, arm, init, epochs,
                                                                                seed)
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

    t = q.teachers[q.teacher]
    ctx = context(p, t.seed, subset(q))
    ckpt, teacher = load_teacher_model(ctx, q.teacher)
    train, val = ctx.splits["train"], ctx.splits["val"]
    pr = q.prune
    calib = (ctx.normalize(train["images"][:pr.calibration_images].to(ctx.device)),
             train["labels"][:pr.calibration_images].to(ctx.device))
    recal_images = ctx.normalize(train["images"][:pr.recalibration_images].to(ctx.device))
    unit = count_params(build_model(ModelParams(q.student.arch, q.student.width, 1, q.student.lr, 0, "auto"), ctx))
    target, small = round(pr.size * unit), round(pr.small * unit)

    def val_acc(model) -> float:
        return accuracy(predict(model, val["images"], val["labels"], ctx.normalize, p.train.eval_batch_size,
                                p.train.precision), val["labels"])

    rows, keepers = {}, {}

    def measure(name, model, route, criterion, scored_on, histories=None):
        recal = recalibrate_bn(model, recal_images)
        rows[name] = {"route": route, "criterion": criterion, "scored_on": scored_on, "params": count_params(model),
                      "val_acc": val_acc(model), "val_acc_recalibrated": val_acc(recal)}
        if histories is not None:
            keepers[name] = (recal, histories)
        print(f"{name}: {rows[name]['params']:,} parameters, val {rows[name]['val_acc']:.4f}, after BatchNorm "
              f"recalibration {rows[name]['val_acc_recalibrated']:.4f}")

    measure("teacher", teacher, "none", None, None)
    carved = keep_blocks(teacher, q.keep, "q23.keep")
    measure("blocks", carved, "blocks", None, None)
    for c in pr.criteria:
        m, hist, _ = channels.prune_to(teacher, c, target, calib, pr.max_ratio, seed=t.seed, key=MAX_RATIO)
        measure(f"channels.{c}", m, "channels", c, "full", [hist])
        m, _, _ = channels.prune_to(carved, c, small, calib, pr.max_ratio, seed=t.seed, key=MAX_RATIO)
        measure(f"blocks+channels.{c}", m, "blocks, then channels", c, "carved")
        m, _, _ = channels.prune_to(teacher, c, small, calib, pr.max_ratio, seed=t.seed, key=MAX_RATIO,
                                    transform=lambda pruned: keep_blocks(pruned, q.keep, "q23.keep"))
        measure(f"channels+blocks.{c}", m, "channels, then blocks", c, "full")
    from kdlab.pipeline.cache import cached_batches

    kd_batches = cached_batches(p, ctx, CACHE, REBUILD, teacher_file(q.teacher), t.seed, subset(q))
    between = kd_finetuner(distill.build("kd", p), kd_batches, pr.finetune_steps, q.student.lr, p.train, ctx.device,
                           ctx.precision)
    m, histories = channels.prune_iteratively(teacher, pr.iterative, target, calib, pr.steps, between, pr.max_ratio,
                                              seed=t.seed)
    measure(f"iterative.{pr.iterative}", m, f"channels, {pr.steps} steps with KD between", pr.iterative, "full",
            histories)
    # the channel-pruned teacher at q23.prune.size that validates best once recalibrated: the pruned students' start
    chosen = max(keepers, key=lambda k: (rows[k]["val_acc_recalibrated"], k))
    model, histories = keepers[chosen]
    io.save_torch({"arch": ckpt["arch"], "width": ckpt["width"], "in_channels": ckpt["in_channels"],
                   "classes": ckpt["classes"], "blocks": None, "pruning": histories, "state_dict": model.state_dict(),
                   "chosen": chosen, **rows[chosen]}, PRUNED)
    out = {"student_params": unit, "target": target, "small_target": small, "chosen": chosen, "models": rows}
    io.save_json(out, PRUNE_JSON)
    print(f"chosen for training: {chosen}")
    return out


# ---------------------------------------------------------------- CKA

def run_q23_cka(p: Params, q: Q23) -> dict:
    """metrics/q23/cka.json: per stage, CKA (biased and unbiased) with ``q23.teacher`` on the first
    ``q23.cka_images`` validation images, for the reference teacher, every student, and the snapshots."""
    from kdlab.core import cka
    from kdlab.core.features import features, layers

    ctx = context(p, 0, subset(q))
    images = ctx.normalize(ctx.splits["val"]["images"][:q.cka_images].to(ctx.device))
    _, teacher = load_teacher_model(ctx, q.teacher)
    paths = layers(teacher)
    t_feats = features(teacher, images, paths)

    def profile(model) -> dict:
        return cka.profile(model, images, paths, t_feats)

    _, ref = load_teacher_model(ctx, q.reference)
    out = {"images": len(images), "stages": paths, "reference": profile(ref), "students": {}, "training": {}}
    for arm, init, epochs in expected_students(q):
        for seed in q.seeds:
            name = student_name(arm, init, epochs, seed)
            ckpt = io.load_torch(STUDENTS / f"{name}.pt", REBUILD)
            model = model_from_checkpoint(ckpt, ctx)
            out["students"][name] = profile(model)
            if epochs != q.epochs or (init not in ("random", "carved")) or arm not in q.carved:
                continue
            through = {}
            for e in q.snapshots:
                model.load_state_dict(io.load_torch(SNAPSHOTS / name / f"e{e}.pt", REBUILD)["state_dict"])
                through[str(e)] = profile(model)
            model.load_state_dict(ckpt["state_dict"])
            through["kept"] = out["students"][name]
            out["training"][name] = through
        print(f"{arm}.{init}-e{epochs}: CKA done")
    io.save_json(out, CKA_JSON)
    return out
