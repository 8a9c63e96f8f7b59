"""What every named study (``studies/<name>``: its own params section and ``dvc.yaml``) shares: where its files
are (:class:`Layout`, derived from its name once), its teacher runs and student architecture as params, its seeded
subset, and its teachers' runs as :class:`kdlab.pipeline.train.RunSpec`. A study's own design (which runs, which
comparisons) is its analysis's: ``kdlab.analysis.<name>_design``."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Union

from kdlab.infra.schema import ParamsError, choice, no_duplicates, positive
from kdlab.pipeline.params import ModelParams
from kdlab.pipeline.spec import RunSpec, Subset


@dataclasses.dataclass(frozen=True)
class Layout:
    """Every folder of the named study ``name``, derived from its name here and nowhere else: its params file
    and pipeline under ``studies/<name>/``, its models under ``models/<name>/``, its caches under
    ``data/<name>/``, its metrics and reports under ``metrics/<name>/`` and ``reports/<name>/``."""
    name: str

    @property
    def folder(self) -> Path:
        return Path("studies", self.name)

    @property
    def params(self) -> Path:
        return self.folder / "params.yaml"

    @property
    def rebuild(self) -> str:
        """The command that rebuilds the study's files, for errors that name a missing one."""
        return f"dvc repro {(self.folder / 'dvc.yaml').as_posix()}"

    @property
    def models(self) -> Path:
        return Path("models", self.name)

    @property
    def teachers(self) -> Path:
        return self.models / "teachers"

    @property
    def students(self) -> Path:
        return self.models / "students"

    @property
    def data(self) -> Path:
        return Path("data", self.name)

    @property
    def metrics(self) -> Path:
        return Path("metrics", self.name)

    @property
    def reports(self) -> Path:
        return Path("reports", self.name)

    def student_files(self, run: str) -> tuple[Path, Path]:
        """(model file, metrics file) of the student run ``run``."""
        return self.students / f"{run}.pt", self.metrics / "students" / f"{run}.json"


def load_section(path: str | Path, name: str, cls):
    """The named study ``name``'s params file ``path`` (its one section, ``name``) as ``cls``, checked (``check()``:
    every error names its key)."""
    from kdlab.infra.schema import build, read_yaml

    raw = read_yaml(Path(path)) or {}
    if set(raw) != {name}:
        raise ParamsError(str(path), f"must hold exactly one section, {name}")
    q = build(cls, raw[name], name)
    q.check()
    return q


@dataclasses.dataclass(frozen=True)
class TeacherRun:
    arch: str = "resnet8"
    width: float = 1.0
    epochs: int = 30
    lr: float = 0.2
    seed: int = 0
    #: also keep the weights at the end of these epochs (early-stopped teachers ``<run>_e<k>``)
    snapshots: list[int] = dataclasses.field(default_factory=list)
    #: its own seeded subset of the training split (0: the study's ``train_images``): a teacher that has seen
    #: more data than its students
    train_images: int = 0


@dataclasses.dataclass(frozen=True)
class StudentSpec:
    arch: str = "resnet8"
    width: float = 0.5
    lr: float = 0.2


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A candidate training recipe: the peak lr of the teacher and the student and the ``train.*`` and
    ``cache.views`` it sets."""
    lr: float = 0.2
    schedule: Literal["onecycle", "cosine"] = "onecycle"
    warmup: float = 0.2
    batch_size: int = 128
    ema: float = 0.0
    views: Union[int, Literal["all"]] = 4
    #: train.compile for the recipe's runs (false: eager; on the AVX512-BF16 EPYC, inductor's compiled backward of
    #: resnet8 x0.5 at batch 125 crashed the process with a heap corruption, and eager was as fast for it)
    compile: Union[bool, Literal["auto"]] = "auto"

    def overrides(self) -> dict:
        """What the recipe sets of the params, as :attr:`kdlab.pipeline.spec.RunSpec.overrides` (its lr is each
        run's own)."""
        return {"train": {"schedule": self.schedule, "warmup": self.warmup, "batch_size": self.batch_size,
                          "ema": self.ema, "compile": self.compile}, "cache": {"views": self.views}}


@dataclasses.dataclass(frozen=True)
class PilotModel:
    """An architecture the pilot trains (its lr is each recipe's, its epochs the pilot's)."""
    arch: str = "resnet8"
    width: float = 1.0
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Pilot:
    #: the teacher whose logits the kd arms read, and the student; the pilot's own, so that the study's
    #: design (its teachers and student) can change after the pilot without invalidating it
    teacher: PilotModel = PilotModel()
    student: PilotModel = PilotModel(width=0.5)
    seeds: list[int] = dataclasses.field(default_factory=list)
    #: every run's budget (teacher and students)
    epochs: int = 30
    #: the student's methods: ``raw`` and methods that read the cached logits
    arms: list[str] = dataclasses.field(default_factory=lambda: ["raw", "kd"])
    #: validation images each run is measured on (a seeded subset of the validation split; all of it at its size)
    val_images: int = 5000
    #: the adoption rule: every arm's seed SD of the final validation accuracy at most ``max_sd`` points, and no
    #: epoch-to-epoch validation drop above ``max_drop`` points in the second half of any run
    max_sd: float = 0.35
    max_drop: float = 5.0
    #: the smallest effect of interest (points) the power analysis sizes seeds for
    effect: float = 0.5
    recipes: dict[str, Recipe] = dataclasses.field(default_factory=dict)

    def check(self, key: str) -> None:
        if not self.recipes:
            return
        from kdlab import distill

        no_duplicates(f"{key}.seeds", self.seeds)
        if len(self.seeds) < 2:
            raise ParamsError(f"{key}.seeds", "at least two: the pilot measures a seed SD")
        positive(f"{key}.epochs", self.epochs)
        positive(f"{key}.val_images", self.val_images)
        positive(f"{key}.max_sd", self.max_sd)
        positive(f"{key}.max_drop", self.max_drop)
        positive(f"{key}.effect", self.effect)
        for arm in self.arms:
            choice(f"{key}.arms", arm, distill.names())
            cls = distill.method_class(arm)
            if cls.uses_teacher_model:
                raise ParamsError(f"{key}.arms", f"{arm} runs the teacher model; the pilot's arms read its cache")
        for name, r in self.recipes.items():
            check_recipe(r, f"{key}.recipes.{name}")


def check_recipe(r: Recipe, key: str) -> None:
    """A recipe checked as the ``train`` section it sets is (errors name ``<key>.<field>``), its lr and views too."""
    from kdlab.pipeline.params import TrainParams

    positive(f"{key}.lr", r.lr)
    dataclasses.replace(TrainParams(), **r.overrides()["train"]).check(key)
    if r.views != "all" and r.views < 1:
        raise ParamsError(f"{key}.views", f"'all' or a positive count, got {r.views}")


def check_study(section: str, q) -> None:
    """What every named study's params must satisfy, checked like the root's (:class:`ModelParams`), each error
    naming its key: its seeds, every teacher run (architecture, width, epochs, lr, seed, subset size) and the
    student."""
    from kdlab.pipeline.params import check_seed

    if not q.seeds:
        raise ParamsError(f"{section}.seeds", "at least one seed")
    no_duplicates(f"{section}.seeds", q.seeds)
    for i, s in enumerate(q.seeds):
        check_seed(f"{section}.seeds[{i}]", s)
    positive(f"{section}.train_images", q.train_images)
    positive(f"{section}.val_images", q.val_images)
    for name, t in q.teachers.items():
        key = f"{section}.teachers.{name}"
        ModelParams(t.arch, t.width, t.epochs, t.lr, t.seed).check(key)
        positive(f"{key}.train_images", t.train_images, strict=False)
    ModelParams(q.student.arch, q.student.width, 1, q.student.lr, 0).check(f"{section}.student")


def subset(q) -> Subset:
    """A named study's subsets (its params ``train_images``, ``val_images`` and ``subset_seed``)."""
    return Subset(q.train_images, q.val_images, q.subset_seed)


def teacher_spec(q, name: str, layout: Layout, extra: dict, overrides: dict | None = None) -> RunSpec:
    """The named study ``q``'s teacher run ``q.teachers[name]``, on the labels, into ``layout.teachers/<name>/``
    (``final.pt``, and ``e<k>.pt`` for each of its snapshots) and ``layout.metrics/teachers/<name>.json`` (with
    ``<name>.curve.json``: its validation curve); the study's name (``q1``) is in the run's name and tags;
    ``overrides``: the study's recipe (:attr:`kdlab.pipeline.spec.RunSpec.overrides`)."""
    t, study = q.teachers[name], layout.name
    out, metrics_dir = layout.teachers / name, layout.metrics / "teachers"
    images = t.train_images or q.train_images
    about = (f"The {study} study's teacher `{name}` ({images} training images)"
             + (f", with snapshots at epochs {t.snapshots}. " if t.snapshots else ". "))
    return RunSpec(f"{study}-teacher-{name}", "teacher", ModelParams(t.arch, t.width, t.epochs, t.lr, t.seed, "auto"),
                   t.seed, (out / "final.pt", metrics_dir / f"{name}.json"),
                   subset=Subset(images, q.val_images, q.subset_seed), all_views=True,
                   snapshots=tuple(t.snapshots), snapshot_dir=out, snapshot_as_model=True,
                   curve=metrics_dir / f"{name}.curve.json", record={"teacher": name}, tags={f"{study}_teacher": name},
                   about=about, extra=extra, overrides=overrides or {})
