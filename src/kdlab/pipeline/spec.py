"""A run as data: :class:`RunSpec` says everything :func:`kdlab.pipeline.train.train` needs to train one teacher
or student of any study (architecture, schedule, seed, initialisation and its source, method and options, the
teacher's model and/or logit cache, the data subset, snapshots and outputs). Plain data, no torch."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kdlab.pipeline.params import ModelParams

#: a run's initialisation
INITS = ("random", "carved", "pruned", "shape")


@dataclass(frozen=True)
class Source:
    """An input file of a run and the command that rebuilds it (named by the error that refuses the file)."""
    path: Path
    rebuild: str


@dataclass(frozen=True)
class Subset:
    """A named study's seeded subsets: the first ``train_images`` of a permutation of the training split seeded
    with ``seed``, and ``val_images`` of the validation split's (seed + 1), each in ascending order."""
    train_images: int
    val_images: int
    seed: int = 0


@dataclass(frozen=True)
class RunSpec:
    """One training run, as :func:`kdlab.pipeline.train.train` takes it."""
    #: ``kd-0``: the checkpoint's, the log's and the MLflow run's name
    name: str
    #: "teacher" or "student" (the MLflow run's stage)
    role: str
    #: architecture and width of a random init, epochs and lr (and channels_last)
    model: ModelParams
    seed: int
    #: (model file, metrics file)
    files: tuple[Path, Path]
    #: the loss (``raw``: labels only) and overrides of its ``methods.<name>`` options
    method: str = "raw"
    options: dict = field(default_factory=dict)
    #: one of :data:`INITS`; ``carved`` keeps the teacher's ``blocks``, ``pruned``/``shape`` start from ``pruned``
    init: str = "random"
    blocks: list | None = None
    pruned: Source | None = None
    #: the teacher's model file (run by methods that read its features, carved by ``carved``) and the
    #: architecture it must have been trained as (anything with ``arch`` and ``width``)
    teacher: Source | None = None
    teacher_model: object = None
    #: the teacher's logit cache (:mod:`kdlab.pipeline.cache`), for methods that read logits
    cache: Source | None = None
    #: a named study's seeded subsets of the training and validation splits (None: the whole splits)
    subset: Subset | None = None
    #: train on any view at every epoch (the teachers), whatever the method's own ``views``
    all_views: bool = False
    #: training images the method sees before training (FitNet's regressors, fitnet_select's ranking)
    calibration_images: int = 32
    #: keep the weights at the end of these epochs (0: before training) in ``snapshot_dir/e<k>.pt``: as loadable
    #: model files (``snapshot_as_model``: early-stopped teachers) or as weights alone (CKA through training)
    snapshots: tuple = ()
    snapshot_dir: Path | None = None
    snapshot_as_model: bool = False
    #: False: the test split is never evaluated (a pilot that chooses a recipe on validation alone)
    test: bool = True
    #: also write ``record`` with the validation curve here (and, with ``predictions``, test accuracy and predictions)
    curve: Path | None = None
    record: dict = field(default_factory=dict)
    predictions: bool = False
    #: logged as tags and saved in the model file
    tags: dict = field(default_factory=dict)
    #: also log the trained model to MLflow (the models a user takes away)
    log_model: bool = False
    #: what was trained, in a sentence, for the MLflow run page (after the generic description)
    about: str = ""
    #: a named study's own params (``q1.*``): logged with the run's, and part of its resume key
    extra: dict = field(default_factory=dict)
    #: what the run sets of the params, ``{section: {field: value}}`` (a study's recipe: ``train.batch_size``,
    #: ``cache.views``, ...): the run trains, reads its cache, logs and resumes with those values
    overrides: dict = field(default_factory=dict)


def _path(source: Source | Path | None) -> str | None:
    if source is None:
        return None
    return Path(getattr(source, "path", source)).as_posix()


def record(spec: RunSpec) -> dict:
    """The run ``spec`` as plain data, as its metrics file carries it (key ``spec``): what was trained (role,
    architecture, width, epochs, lr, seed), how (method and its options, initialisation and its source, the
    teacher's model file and logit cache, the data subset, the study's recipe: ``overrides``), its tags (the
    study's arm) and its model file. Together with the measured numbers beside it, the file alone says which run
    it is: ``kdlab results`` builds its table from these. Left out: what only the process needs (MLflow text,
    the curve's record, snapshot folder) and the study's params (``extra``: the MLflow run has them)."""
    m = spec.model
    return {
        "name": spec.name, "role": spec.role, "model_file": _path(spec.files[0]),
        "arch": m.arch, "width": m.width, "epochs": m.epochs, "lr": m.lr, "seed": spec.seed,
        "method": spec.method, "options": dict(spec.options),
        "init": spec.init, "blocks": spec.blocks if spec.init == "carved" else None, "pruned": _path(spec.pruned),
        "teacher": _path(spec.teacher), "cache": _path(spec.cache),
        "subset": None if spec.subset is None else dataclasses.asdict(spec.subset),
        "all_views": spec.all_views, "snapshots": list(spec.snapshots), "test": spec.test,
        "overrides": spec.overrides, "tags": spec.tags,
    }
