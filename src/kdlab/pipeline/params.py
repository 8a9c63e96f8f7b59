"""The study's parameters (params.yaml) as frozen dataclasses, one per section, validated before any work.

Each section checks its own values (``check``, naming the dotted key, e.g. ``loss.alpha``, and where the
value comes from a fixed set, the allowed values); :func:`check` adds what only sections together can say.
The generic machinery (building, overrides, flattening) is :mod:`kdlab.infra.schema`; the checks that need torch
(architectures, every method's options) are ``kdlab check`` (:mod:`kdlab.pipeline.check`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Union

from kdlab.infra.schema import (
    ParamsError,
    apply_override,
    build,
    choice,
    missing_keys,
    no_duplicates,
    parse_override,
    positive,
    read_yaml,
    unit_interval,
)

#: the labels-only student every distillation method is compared against
BASELINE = "raw"
#: channel-importance criteria of question 3's pruning (studies/q23, kdlab.core.channels); here so that validation needs no torch
PRUNE_CRITERIA = ("l1", "bn_scale", "taylor", "activation", "random")
#: a study trains (1 + len(methods)) x len(seeds) students; more seeds than this is almost surely a typo
MAX_SEEDS = 20
#: seeds are in [0, SEED_LIMIT): torch's generators take seeds modulo 2**64 (-1 draws what 2**64 - 1 draws),
#: and a run's epoch generator is seeded with seed * 1_000_003 + epoch, which must stay apart and below 2**64
SEED_LIMIT = 2 ** 32
#: epochs per run at most (epoch generators of seeds s and s + 1 meet at epoch 1_000_003)
MAX_EPOCHS = 100_000


def check_seed(key: str, value: int) -> None:
    if not 0 <= value < SEED_LIMIT:
        raise ParamsError(key, f"must be in [0, 2**32), got {value}")


def _distillers() -> list[str]:
    from kdlab.distill import names

    return [m for m in names() if m != BASELINE]


@dataclass(frozen=True)
class SyntheticParams:
    n_train: int = 600
    n_test: int = 200
    image_size: int = 12
    channels: int = 1
    classes: int = 4

    def check(self, key: str) -> None:
        for k in ("n_train", "n_test", "image_size", "channels"):
            positive(f"{key}.{k}", getattr(self, k))
        if self.classes < 2:
            raise ParamsError(f"{key}.classes", f"must be >= 2, got {self.classes}")


@dataclass(frozen=True)
class DataParams:
    name: str = "fashion_mnist"
    root: str = "data/raw"
    val_size: int = 5000
    split_seed: int = 0
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)

    def check(self, key: str) -> None:
        from kdlab.core.data import DATASETS, SHAPES

        choice(f"{key}.name", self.name, DATASETS)
        positive(f"{key}.val_size", self.val_size)
        self.synthetic.check(f"{key}.synthetic")
        n_train = SHAPES.get(self.name, (0, 0, self.synthetic.n_train))[2]
        if self.val_size >= n_train and self.name != "synthetic":
            raise ParamsError(f"{key}.val_size", f"{self.val_size} leaves no training images ({self.name} has "
                              f"{n_train}); use fewer than {n_train}")
        if self.name == "synthetic" and self.synthetic.n_train < 5:  # its val split is a fifth of n_train at most
            raise ParamsError(f"{key}.synthetic.n_train", f"{self.synthetic.n_train} leaves no validation images "
                              f"(the synthetic validation split is min(data.val_size, n_train // 5)); use at least 5")
        check_seed(f"{key}.split_seed", self.split_seed)

    @property
    def image_size(self) -> int:
        from kdlab.core.data import SHAPES

        return SHAPES.get(self.name, (0, self.synthetic.image_size))[1]


@dataclass(frozen=True)
class ViewParams:
    pad: int = 2
    flip: bool = True

    def check(self, key: str) -> None:
        positive(f"{key}.pad", self.pad, strict=False)


@dataclass(frozen=True)
class ModelParams:
    arch: str = "resnet20"
    width: float = 1.0
    epochs: int = 10
    lr: float = 0.1
    seed: int = 0
    channels_last: Union[bool, Literal["auto"]] = "auto"  # auto: on CUDA only

    def check(self, key: str) -> None:
        from kdlab.core.models import ARCHS

        choice(f"{key}.arch", self.arch, ARCHS)
        positive(f"{key}.width", self.width)
        if self.width != 1.0 and not ARCHS[self.arch].has_width:
            raise ParamsError(f"{key}.width", f"{self.arch} has no width multiplier; use 1.0 or one of "
                              f"{', '.join(sorted(a for a, s in ARCHS.items() if s.has_width))}")
        positive(f"{key}.epochs", self.epochs)
        if self.epochs > MAX_EPOCHS:
            raise ParamsError(f"{key}.epochs", f"{self.epochs} is more than {MAX_EPOCHS:,}")
        positive(f"{key}.lr", self.lr)
        check_seed(f"{key}.seed", self.seed)


@dataclass(frozen=True)
class TrainParams:
    batch_size: int = 128
    eval_batch_size: int = 1000
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: Literal["onecycle", "cosine"] = "onecycle"
    warmup: float = 0.2
    label_smoothing: float = 0.0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0
    nproc: int = 1          # data-parallel processes (torchrun) per training stage
    precision: Literal["auto", "fp32", "bf16"] = "auto"   # auto: bf16 autocast on CUDA, fp32 on the CPU
    compile: Union[bool, Literal["auto"]] = "auto"        # torch.compile the training step; auto: on CUDA
    ema: float = 0.0        # > 0: validate and keep an exponential moving average of the weights (decay per step)

    def check(self, key: str) -> None:
        positive(f"{key}.batch_size", self.batch_size)
        positive(f"{key}.eval_batch_size", self.eval_batch_size)
        positive(f"{key}.weight_decay", self.weight_decay, strict=False)
        for k in ("momentum", "warmup", "label_smoothing"):
            unit_interval(f"{key}.{k}", getattr(self, k))
        positive(f"{key}.threads", self.threads, strict=False)
        positive(f"{key}.nproc", self.nproc)
        if not 0 <= self.ema < 1:
            raise ParamsError(f"{key}.ema", f"{self.ema} is not a decay in [0, 1) (0: no average)")
        if self.batch_size % self.nproc:
            raise ParamsError(f"{key}.batch_size", f"{self.batch_size} does not divide by train.nproc={self.nproc} "
                              f"(each process takes an equal slice of every batch)")


@dataclass(frozen=True)
class LossParams:
    alpha: float = 0.5
    temperature: float = 4.0

    def check(self, key: str) -> None:
        unit_interval(f"{key}.alpha", self.alpha, closed=True)
        positive(f"{key}.temperature", self.temperature)


@dataclass(frozen=True)
class CacheParams:
    views: Union[int, Literal["all"]] = "all"
    seed: int = 0
    batch_size: int = 1000

    def check(self, key: str) -> None:
        positive(f"{key}.batch_size", self.batch_size)
        check_seed(f"{key}.seed", self.seed)


@dataclass(frozen=True)
class StudyParams:
    methods: list[str] = field(default_factory=lambda: ["kd", "kd_correct_only"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    #: the smallest effect of interest and the equivalence margin (TOST), in points of test accuracy
    effect: float = 0.5

    def check(self, key: str) -> None:
        distillers = _distillers()
        positive(f"{key}.effect", self.effect)
        if not self.methods:
            raise ParamsError(f"{key}.methods", "is empty; list at least one of " + ", ".join(distillers))
        for i, v in enumerate(self.methods):
            if v == BASELINE:
                raise ParamsError(f"{key}.methods[{i}]", f"{BASELINE!r} is the baseline, trained by the `baseline` "
                                  f"stage in every study; list only distillation methods: {', '.join(distillers)}")
            choice(f"{key}.methods[{i}]", v, distillers)
        no_duplicates(f"{key}.methods", self.methods)
        if not self.seeds:
            raise ParamsError(f"{key}.seeds", "is empty; give at least one seed, e.g. [0, 1, 2]")
        if len(self.seeds) > MAX_SEEDS:
            raise ParamsError(f"{key}.seeds", f"has {len(self.seeds)} seeds; at most {MAX_SEEDS} are allowed")
        no_duplicates(f"{key}.seeds", self.seeds)
        for i, s in enumerate(self.seeds):
            check_seed(f"{key}.seeds[{i}]", s)


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    views: ViewParams = field(default_factory=ViewParams)
    teacher: ModelParams = field(default_factory=ModelParams)
    student: ModelParams = field(default_factory=lambda: ModelParams(arch="resnet8"))
    train: TrainParams = field(default_factory=TrainParams)
    loss: LossParams = field(default_factory=LossParams)
    cache: CacheParams = field(default_factory=CacheParams)
    study: StudyParams = field(default_factory=StudyParams)
    #: each method's own options, ``methods.<name>.<key>``, checked against the method file's ``Options``
    methods: dict[str, dict] = field(default_factory=dict)


SECTIONS = ("data", "views", "teacher", "student", "train", "loss", "cache", "study")


def check(p: Params) -> Params:
    """Every section's own check, then what only sections together can say."""
    from kdlab.core.data import split_sizes
    from kdlab.core.views import num_views
    from kdlab.distill import names as method_names

    for name in SECTIONS:
        getattr(p, name).check(name)
    for name in p.methods:
        choice(f"methods.{name}", name, method_names())
    size = p.data.image_size
    if 2 * p.views.pad >= size:
        raise ParamsError("views.pad", f"{p.views.pad} shifts {p.data.name}'s {size}x{size} images out of the frame; "
                          f"use at most {(size - 1) // 2}")
    last = split_sizes(p.data)["train"] % p.train.batch_size
    if 0 < last < p.train.nproc:
        raise ParamsError("train.batch_size", f"{p.train.batch_size} leaves a last batch of {last} training images, "
                          f"fewer than train.nproc={p.train.nproc}; choose another batch size or data.val_size")
    if p.cache.views != "all":
        total = num_views(p.views.pad, p.views.flip)
        if not 1 <= p.cache.views <= total:
            raise ParamsError("cache.views", f"must be 'all' or an integer in [1, {total}] "
                              f"(views.pad={p.views.pad}, views.flip={p.views.flip} give {total} views), "
                              f"got {p.cache.views}")
    return p


def with_overrides(p: Params, overrides: dict) -> Params:
    """``p`` with ``{section: {field: value}}`` set (values already checked, e.g. a study's recipe)."""
    for section, fields in overrides.items():
        p = replace(p, **{section: replace(getattr(p, section), **fields)})
    return p


def from_dict(raw: dict | None, overrides: list[str] = ()) -> Params:
    raw = dict(raw or {})
    for text in overrides:
        apply_override(raw, *parse_override(text))
    return check(build(Params, raw))


def load(path: str | Path = "params.yaml", overrides: list[str] = ()) -> Params:
    """The params file, complete (every key set: the built-in defaults are not the shipped study's) and
    checked. ``kdlab check`` (the pipeline's first stage) adds the checks that need torch (:mod:`kdlab.pipeline.check`);
    only it imports every method, so editing one method file re-runs the check (seconds), not the whole study."""
    path = Path(path)
    raw = read_yaml(path) or {}
    missing = missing_keys(Params, raw)
    if missing:
        shown = ", ".join(missing[:12]) + (f" and {len(missing) - 12} more" if len(missing) > 12 else "")
        raise ParamsError(str(path), f"does not set {shown}; every key must be set (kdlab's built-in defaults "
                          f"are not the shipped study's): add them, or restore the shipped file with "
                          f"`git checkout -- {path}`")
    return from_dict(raw, overrides)
