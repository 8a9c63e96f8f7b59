"""Question 1 in depth, the named study in ``studies/q1`` (``make q1``): does distillation cap the student?

Its params are ``studies/q1/params.yaml`` (section ``q1``, checked by :func:`load`); data, views, the cache's
views, ``train.*`` and ``loss.*`` are the default study's (params.yaml). Every run trains on a seeded subset of
the prepared training split (``q1.train_images``) and chooses its checkpoint on a seeded subset of the
validation split (``q1.val_images``), so that a dozen budgets, sizes and teachers fit in the 2-core CPU's time.

Stages (``kdlab q1_teacher | q1_cache | q1_student``; ``q1_report`` is :mod:`kdlab.analysis.q1_report`):

- ``q1_teacher --teacher RUN``: trains ``q1.teachers[RUN]`` on the labels, keeping its best-on-validation
  state (``final.pt``) and its weights at the end of each of its ``snapshots`` epochs (``e<k>.pt``): the
  early-stopped teachers of the same run.
- ``q1_cache --teacher T``: ``T`` is a run (its final state) or ``RUN_e<k>`` (a snapshot). The teacher's logits
  on the cached views of the subset (as :mod:`kdlab.pipeline.cache`), whether it is right on each clean training image,
  its accuracy on validation and test, how many training views and images it gets wrong, and its test
  predictions with their confidence.
- ``q1_student --variant V [--teacher T] --width W --epochs E --seed S``: the student ``q1.student`` at width W
  trained E epochs with the distillation method V (``raw``: labels only) from teacher T's cache; writes its
  metrics and its test predictions.

Every file is tensors or plain data (:func:`kdlab.infra.io.load_torch`, JSON).
"""
from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path

import torch

from kdlab import distill
from kdlab.core import views
from kdlab.core.loader import TrainBatches
from kdlab.core.train import accuracy, autocast, predict
from kdlab.distill.raw import Raw
from kdlab.infra import distributed, io
from kdlab.infra.schema import ParamsError, build, choice, flatten_dict, no_duplicates, positive, read_yaml
from kdlab.pipeline.params import ModelParams, Params
from kdlab.pipeline.stages import Run, train_run
from kdlab.pipeline.workspace import build_model, context, model_from_checkpoint

#: the study's params file (relative to the repository root, where its stages run)
STUDY = Path("studies/q1/params.yaml")
TEACHERS = Path("models/q1/teachers")
STUDENTS = Path("models/q1/students")
CACHES = Path("data/q1/logits")
METRICS = Path("metrics/q1")
#: per teacher: its accuracy and the training views and images it gets wrong (q1_cache)
CACHE_METRICS = METRICS / "caches"
#: per student (and teacher): identity and test predictions, for the per-class and per-confidence analysis
TESTS = METRICS / "tests"
SNAPSHOT = re.compile(r"^(?P<run>.+)_e(?P<epoch>\d+)$")


@dataclasses.dataclass(frozen=True)
class TeacherRun:
    arch: str = "resnet8"
    width: float = 1.0
    epochs: int = 30
    lr: float = 0.2
    seed: int = 0
    #: also keep the weights at the end of these epochs (early-stopped teachers ``<run>_e<k>``)
    snapshots: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class StudentSpec:
    arch: str = "resnet8"
    width: float = 0.5
    lr: float = 0.2


@dataclasses.dataclass(frozen=True)
class Q1:
    train_images: int = 5000
    val_images: int = 2000
    subset_seed: int = 0
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    teachers: dict[str, TeacherRun] = dataclasses.field(default_factory=dict)
    #: the converged teacher of the budget and capacity arms
    teacher: str = "main"
    #: every teacher with a logit cache (a run, or a snapshot ``<run>_e<k>``) -> the run it comes from, so that
    #: its cache stage depends on that run's directory alone (dvc.yaml)
    cached: dict[str, str] = dataclasses.field(default_factory=dict)
    student: StudentSpec = StudentSpec()
    #: student epochs: raw and every one of ``variants`` at each
    budgets: list[int] = dataclasses.field(default_factory=list)
    variants: list[str] = dataclasses.field(default_factory=list)
    #: the budget of the capacity arms (one of ``budgets``)
    converged: int = 15
    #: student widths (besides student.width) trained raw and kd at the last budget; the teacher's = born-again
    widths: list[float] = dataclasses.field(default_factory=list)
    #: the other teachers, each distilled with kd at ``quality_epochs``
    quality: list[str] = dataclasses.field(default_factory=list)
    quality_epochs: int = 5
    #: question 1b's controls, distilled from ``control_teacher`` at ``quality_epochs``
    control_teacher: str = "main_e10"
    controls: list[str] = dataclasses.field(default_factory=list)

    def check(self) -> None:
        positive("q1.train_images", self.train_images)
        positive("q1.val_images", self.val_images)
        no_duplicates("q1.seeds", self.seeds)
        if not self.seeds:
            raise ParamsError("q1.seeds", "at least one seed")
        from kdlab.core.models import ARCHS

        for name, t in self.teachers.items():
            choice(f"q1.teachers.{name}.arch", t.arch, ARCHS)
            positive(f"q1.teachers.{name}.width", t.width)
            positive(f"q1.teachers.{name}.epochs", t.epochs)
            if "_e" in name:
                raise ParamsError(f"q1.teachers.{name}", "a run's name may not contain `_e` (snapshots are <run>_e<k>)")
            for k in t.snapshots:
                if not 0 < k < t.epochs:
                    raise ParamsError(f"q1.teachers.{name}.snapshots", f"{k} is not an epoch before the last ({t.epochs})")
        choice("q1.student.arch", self.student.arch, ARCHS)
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
        if not self.budgets or any(b < 1 for b in self.budgets) or sorted(self.budgets) != self.budgets:
            raise ParamsError("q1.budgets", f"increasing epochs, at least one: {self.budgets}")
        if self.converged not in self.budgets:
            raise ParamsError("q1.converged", f"{self.converged} must be one of q1.budgets {self.budgets}")
        if self.teacher in self.quality or self.control_teacher == self.teacher:
            raise ParamsError("q1.quality", f"the other teachers (quality, control_teacher) must not include "
                              f"q1.teacher {self.teacher!r}: its arms are the budget arms")
        if self.student.width in self.widths:
            raise ParamsError("q1.widths", f"{self.student.width} is q1.student.width, trained at every budget")
        if self.quality_epochs not in self.budgets:
            raise ParamsError("q1.quality_epochs", f"{self.quality_epochs} must be one of q1.budgets {self.budgets} "
                              f"(its raw and kd arms are the budget arms')")
        for key in ("variants", "controls"):
            for v in getattr(self, key):
                choice(f"q1.{key}", v, distill.names())


def teacher_source(q: Q1, name: str) -> tuple[str, int | None]:
    """(run, snapshot epoch or None) of a cached teacher's name: ``main`` or ``main_e3``."""
    m = SNAPSHOT.match(name)
    run, epoch = (m["run"], int(m["epoch"])) if m else (name, None)
    if run not in q.teachers:
        raise ParamsError("q1.cached", f"{name!r}: no teacher run {run!r} in q1.teachers {sorted(q.teachers)}")
    if epoch is not None and epoch not in q.teachers[run].snapshots:
        raise ParamsError("q1.cached", f"{name!r}: epoch {epoch} is not in q1.teachers.{run}.snapshots")
    return run, epoch


def load(path: Path = STUDY) -> Q1:
    raw = read_yaml(Path(path)) or {}
    if set(raw) != {"q1"}:
        raise ParamsError(str(path), "must hold exactly one section, q1")
    q = build(Q1, raw["q1"], "q1")
    q.check()
    return q


def teacher_file(name: str, q: Q1) -> Path:
    run, epoch = teacher_source(q, name)
    return TEACHERS / run / ("final.pt" if epoch is None else f"e{epoch}.pt")


def student_name(variant: str, teacher: str | None, width: float, epochs: int, seed: int) -> str:
    """``kd.main-w0.5-e15-s0``; a labels-only run names no teacher: ``raw-w0.5-e15-s0``."""
    head = variant if teacher is None else f"{variant}.{teacher}"
    return f"{head}-w{float(width)}-e{epochs}-s{seed}"


def subset(n_total: int, n: int, seed: int) -> torch.Tensor:
    """The first ``n`` of a seeded permutation of ``range(n_total)``, in ascending order."""
    if n > n_total:
        raise io.StageError(f"the study asks for {n} images of a split of {n_total}: lower it in {STUDY}")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=g)[:n].sort().values


def subset_context(p: Params, q, seed: int):
    """The default study's context with the training and validation splits cut to the study's subsets (``q``: a
    named study's params with ``train_images``, ``val_images`` and ``subset_seed``)."""
    ctx = context(p, seed)
    for split, n, offset in (("train", q.train_images, 0), ("val", q.val_images, 1)):
        s = ctx.splits[split]
        idx = subset(len(s["labels"]), n, q.subset_seed + offset)
        ctx.splits[split] = {k: v[idx] for k, v in s.items()}
    return ctx


def study_params(q: Q1) -> dict:
    return flatten_dict(dataclasses.asdict(q), "q1.")


# ---------------------------------------------------------------- teachers

class _Snapshots(Raw):
    """Labels-only training that also saves the model's weights at the end of given epochs: at the start of
    epoch k + 1 they are the end of epoch k, trained or resumed from a checkpoint alike."""

    def __init__(self, loss, label_smoothing: float, epochs: list[int], save):
        super().__init__(loss, None, label_smoothing)
        self.snapshot_epochs, self.save = set(epochs), save
        self._model: list[torch.nn.Module] = []

    def attach(self, student, teacher, example) -> None:
        self._model = [student]

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        if epoch - 1 in self.snapshot_epochs and distributed.is_main():
            self.save(epoch - 1, copy.deepcopy(self._model[0].state_dict()))


def _model_file(spec, ctx, state: dict, seed: int, **extra) -> dict:
    return {"arch": spec.arch, "width": spec.width, "in_channels": ctx.meta["channels"],
            "classes": ctx.meta["classes"], "state_dict": state, "seed": seed, "data_sha256": ctx.meta["sha256"],
            **extra}


def train_teacher(p: Params, q, name: str, out: Path, metrics_dir: Path, study: str, extra: dict) -> dict:
    """Train the named study ``q``'s teacher run ``q.teachers[name]`` on the labels into ``out`` (``final.pt``,
    and ``e<k>.pt`` for each of its snapshots) and ``metrics_dir/<name>.json`` (with ``<name>.curve.json``: its
    validation curve); ``study``: the study's name in run names and tags (``q1``)."""
    t = q.teachers[name]
    ctx = subset_context(p, q, t.seed)
    spec = ModelParams(t.arch, t.width, t.epochs, t.lr, t.seed, "auto")
    model = build_model(spec, ctx)

    def save(epoch, state):
        io.save_torch(_model_file(spec, ctx, state, t.seed, epoch=epoch), out / f"e{epoch}.pt")

    method = _Snapshots(p.loss, p.train.label_smoothing, t.snapshots, save)
    method.attach(model, None, None)
    train = ctx.splits["train"]
    table = views.view_table(len(train["labels"]), p.views.pad, p.views.flip, "all", 0)
    batches = TrainBatches(train["images"], train["labels"], ctx.normalize, p.train.batch_size, p.views.pad, table,
                           seed=t.seed, rank=distributed.rank(), world=distributed.world())
    about = (f"The {study} study's teacher `{name}` ({q.train_images} training images)"
             + (f", with snapshots at epochs {t.snapshots}. " if t.snapshots else ". "))
    metrics = train_run(p, ctx, Run(f"{study}-teacher-{name}", "teacher", spec, t.seed, method, batches, model,
                                    (out / "final.pt", metrics_dir / f"{name}.json"), {f"{study}_teacher": name},
                                    about=about, extra=extra))
    if distributed.is_main():  # its validation curve, to show where it plateaus
        io.save_json({"teacher": name, "val_curve": [row["val_acc"] for row in res_history(out / "final.pt")]},
                     metrics_dir / f"{name}.curve.json")
    return metrics


def run_q1_teacher(p: Params, q: Q1, name: str) -> dict:
    return train_teacher(p, q, name, TEACHERS / name, METRICS / "teachers", "q1", study_params(q))


# ---------------------------------------------------------------- caches

def _digits(pred: torch.Tensor) -> str:
    """Predicted classes as one string of digits (plain data, a tenth of a JSON list)."""
    if int(pred.max()) > 9:
        return ",".join(map(str, pred.tolist()))
    return "".join(map(str, pred.tolist()))


def run_q1_cache(p: Params, q: Q1, name: str) -> dict:
    return write_cache(p, q, name, teacher_file(name, q), CACHES / f"{name}.pt", CACHE_METRICS / f"{name}.json",
                       TESTS / f"teacher.{name}.json", f"dvc repro {STUDY.parent / 'dvc.yaml'}")


def write_cache(p: Params, q, name: str, path: Path, cache: Path, metrics_file: Path, tests: Path, rebuild: str) -> dict:
    """The named study ``q``'s logit cache of the teacher file ``path`` into ``cache``, with its accuracies and
    wrong fractions (``metrics_file``) and its test predictions (``tests``)."""
    ctx = subset_context(p, q, p.cache.seed)
    teacher = model_from_checkpoint(io.load_torch(path, rebuild), ctx)
    train = ctx.splits["train"]
    n = len(train["labels"])
    table = views.view_table(n, p.views.pad, p.views.flip, p.cache.views, p.cache.seed)
    from kdlab.pipeline.cache import teacher_logits_for

    cast = autocast(ctx.device, p.train.precision)
    logits = teacher_logits_for(teacher, train["images"], table, ctx.normalize, p.views.pad, p.cache.batch_size, cast)
    bs, prec = p.train.eval_batch_size, p.train.precision
    clean = predict(teacher, train["images"], train["labels"], ctx.normalize, bs, prec)
    val = predict(teacher, ctx.splits["val"]["images"], ctx.splits["val"]["labels"], ctx.normalize, bs, prec)
    test_images, test_labels = ctx.splits["test"]["images"], ctx.splits["test"]["labels"]
    test = predict(teacher, test_images, test_labels, ctx.normalize, bs, prec)
    labels = train["labels"]
    view_right = logits.float().argmax(-1) == labels[:, None]
    clean_right = clean.argmax(1) == labels
    stamp = {"teacher_sha256": io.sha256(path), "pad": p.views.pad, "flip": p.views.flip, "views": p.cache.views,
             "seed": p.cache.seed, "images": n}
    io.save_torch({"view_ids": table, "logits": logits, "clean_correct": clean_right, **stamp}, cache)
    metrics = {
        "teacher": name, "val_acc": accuracy(val, ctx.splits["val"]["labels"]), "test_acc": accuracy(test, test_labels),
        "train_view_acc": view_right.float().mean().item(), "train_clean_acc": clean_right.float().mean().item(),
        # the fractions the KD-where-right variants act on
        "train_views_wrong": 1 - view_right.float().mean().item(),
        "train_images_wrong": 1 - clean_right.float().mean().item(),
        "train_images_any_view_wrong": (~view_right).any(1).float().mean().item(),
        "train_views_wrong_clean_right": (~view_right & clean_right[:, None]).float().mean().item(),
    }
    io.save_json(metrics, metrics_file)
    probs = test.softmax(1)
    io.save_json({"teacher": name, "test_acc": metrics["test_acc"], "pred": _digits(probs.argmax(1)),
                  "labels": _digits(test_labels),
                  "confidence": [round(v, 4) for v in probs.max(1).values.tolist()]}, tests)
    print(f"cache {name}: teacher val {metrics['val_acc']:.4f} test {metrics['test_acc']:.4f}; wrong on "
          f"{metrics['train_views_wrong']:.4f} of cached training views, {metrics['train_images_wrong']:.4f} of "
          f"clean training images")
    return metrics


def load_q1_cache(p: Params, q: Q1, name: str) -> dict:
    return read_cache(p, q, CACHES / f"{name}.pt", teacher_file(name, q), f"dvc repro {STUDY.parent / 'dvc.yaml'}")


def read_cache(p: Params, q, path: Path, teacher: Path, rebuild: str) -> dict:
    """A cache :func:`write_cache` wrote, checked against the views, the subset and the teacher file it must match."""
    c = io.load_torch(path, rebuild)
    expected = {"pad": p.views.pad, "flip": p.views.flip, "views": p.cache.views, "seed": p.cache.seed,
                "images": q.train_images, "teacher_sha256": io.sha256(teacher)}
    got = {k: c.get(k) for k in expected}
    if got != expected:
        raise io.StageError(f"{path} was built with {got} but the study asks for {expected}; rebuild it with `{rebuild}`")
    return c


# ---------------------------------------------------------------- students

def res_history(model_file: Path) -> list[dict]:
    """The per-epoch rows (val_acc, loss...) saved in a trained model's file."""
    return io.load_torch(model_file, f"dvc repro {STUDY.parent / 'dvc.yaml'}")["history"]


def run_q1_student(p: Params, q: Q1, variant: str, teacher: str | None, width: float, epochs: int,
                   seed: int) -> dict:
    method = distill.build(variant, p)
    if method.uses_teacher_model or method.builds_from_teacher:
        raise io.StageError(f"question 1's study distils from cached logits; {variant!r} runs the teacher model")
    if method.uses_teacher_logits == (teacher is None):
        raise io.StageError(f"--variant {variant}: {'give' if teacher is None else 'no'} --teacher")
    ctx = subset_context(p, q, seed)
    train = ctx.splits["train"]
    resume_key, logits = {}, None
    if teacher is not None:
        c = load_q1_cache(p, q, teacher)
        table, logits = c["view_ids"], c["logits"]
        resume_key["cache_sha256"] = io.sha256(CACHES / f"{teacher}.pt")
        if getattr(method, "reads_clean_correct", False):
            method.clean_correct = c["clean_correct"].to(ctx.device)
    else:
        table = views.view_table(len(train["labels"]), p.views.pad, p.views.flip, p.cache.views, p.cache.seed)
    batches = TrainBatches(train["images"], train["labels"], ctx.normalize, p.train.batch_size, p.views.pad, table,
                           seed=seed, teacher_logits=logits, rank=distributed.rank(), world=distributed.world())
    spec = ModelParams(q.student.arch, width, epochs, q.student.lr, seed, "auto")
    model = build_model(spec, ctx)
    method.attach(model, None, ctx.normalize(train["images"][:32].to(ctx.device)))
    method.to(ctx.device)
    name = student_name(variant, teacher, width, epochs, seed)
    about = (f"Question 1: {q.student.arch} x{width} for {epochs} epochs on {q.train_images} training images, "
             f"{'from teacher `' + teacher + '`' if teacher else 'labels only'}. ")
    tags = {"variant": variant, "q1_teacher": teacher or "", "width": width, "epochs": epochs}
    metrics = train_run(p, ctx, Run(name, "student", spec, seed, method, batches, model,
                                    (STUDENTS / f"{name}.pt", METRICS / "students" / f"{name}.json"), tags,
                                    resume_key, about=about, extra=study_params(q)))
    if distributed.is_main():  # train_run leaves the kept (best-on-validation) state in the model
        test = ctx.splits["test"]
        pred = predict(model, test["images"], test["labels"], ctx.normalize, p.train.eval_batch_size,
                       p.train.precision).argmax(1)
        io.save_json({"variant": variant, "teacher": teacher, "arch": q.student.arch, "width": width,
                      "epochs": epochs, "seed": seed, "test_acc": metrics["test_acc"], "val_acc": metrics["val_acc"],
                      "val_curve": [row["val_acc"] for row in res_history(STUDENTS / f"{name}.pt")],
                      "pred": _digits(pred)}, TESTS / f"{name}.json")
    return metrics
