"""params.yaml -> frozen dataclasses, validated before any work.

Every error names the offending key (dotted, e.g. ``loss.alpha``) and, where the
value comes from a fixed set, the allowed values.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

import yaml


#: the labels-only student every distillation variant is compared against
BASELINE = "raw"
#: channel-importance criteria of the question-3 pruning (kdlab.prune); here so that validation needs no torch
PRUNE_CRITERIA = ("l1", "bn_scale", "taylor", "activation", "random")
#: a study trains (1 + len(variants)) x len(seeds) students; more seeds than this is almost surely a typo
MAX_SEEDS = 20
#: seeds are in [0, SEED_LIMIT): torch's generators take seeds modulo 2**64 (-1 draws what 2**64 - 1 draws),
#: and a run's epoch generator is seeded with seed * 1_000_003 + epoch, which must stay apart and below 2**64
SEED_LIMIT = 2 ** 32
#: epochs per run at most (epoch generators of seeds s and s + 1 meet at epoch 1_000_003)
MAX_EPOCHS = 100_000


class ParamsError(ValueError):
    """A bad value in params.yaml (or an override); the message names the key."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"params: {key}: {message}")


@dataclass(frozen=True)
class SyntheticParams:
    n_train: int = 600
    n_test: int = 200
    image_size: int = 12
    channels: int = 1
    classes: int = 4


@dataclass(frozen=True)
class DataParams:
    name: str = "fashion_mnist"
    root: str = "data/raw"
    val_size: int = 5000
    split_seed: int = 0
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)


@dataclass(frozen=True)
class ViewParams:
    pad: int = 2
    flip: bool = True


@dataclass(frozen=True)
class ModelParams:
    arch: str = "resnet20"
    width: float = 1.0
    epochs: int = 10
    lr: float = 0.1
    seed: int = 0
    channels_last: Union[bool, Literal["auto"]] = "auto"  # auto: on CUDA only


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


@dataclass(frozen=True)
class LossParams:
    alpha: float = 0.5
    temperature: float = 4.0


@dataclass(frozen=True)
class CacheParams:
    views: Union[int, Literal["all"]] = "all"
    seed: int = 0
    batch_size: int = 1000


@dataclass(frozen=True)
class StudyParams:
    variants: list[str] = field(default_factory=lambda: ["kd", "kd_correct_only"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])


@dataclass(frozen=True)
class PartsParams:
    """Question 2: which parts of the network benefit from distillation."""
    method: str = "fitnet"
    stages: list[str] = field(default_factory=lambda: ["layer1", "layer2", "layer3"])
    init: list[str] = field(default_factory=lambda: ["init_teacher", "init_random"])
    cka_images: int = 512


@dataclass(frozen=True)
class PruneParams:
    """Question 3: students pruned out of the teacher by channel importance (stages prune, pruned, pruning)."""
    criterion: str = "activation"
    compare: list[str] = field(default_factory=lambda: ["l1", "bn_scale", "taylor", "random"])
    sizes: list[float] = field(default_factory=lambda: [1.0, 0.5])
    steps: int = 1
    finetune_steps: int = 100
    calibration_images: int = 256
    max_ratio: float = 0.9
    keep: list[list[int]] = field(default_factory=list)


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
    parts: PartsParams = field(default_factory=PartsParams)
    prune: PruneParams = field(default_factory=PruneParams)


# ---------------------------------------------------------------- parsing

def _convert(key: str, tp, value):
    """Check ``value`` against the annotation ``tp``; return the (possibly coerced) value."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ParamsError(key, f"expected a mapping, got {value!r}")
        return _build(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ParamsError(key, f"{value!r} is not allowed; allowed: {', '.join(map(str, typing.get_args(tp)))}")
        return value
    if origin is Union:
        errors = []
        for option in typing.get_args(tp):
            try:
                return _convert(key, option, value)
            except ParamsError as e:
                errors.append(str(e).split(": ", 2)[-1])
        raise ParamsError(key, " or ".join(errors))
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(key, f"expected a mapping, got {value!r}")
        _, item_tp = typing.get_args(tp)
        return {k: _convert(f"{key}.{k}", item_tp, v) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(key, f"expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(f"{key}[{i}]", item_tp, v) for i, v in enumerate(value)]
    if tp is dict:  # checked in full by whoever owns it (a method's Options)
        if not isinstance(value, dict):
            raise ParamsError(key, f"expected a mapping, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(key, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ParamsError(key, f"expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp} for {key}")


def _build(cls, raw: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in raw:
        if k not in names:
            where = f"{prefix}.{k}" if prefix else str(k)
            raise ParamsError(where, f"unknown key; allowed keys here: {', '.join(names)}")
    kwargs = {k: _convert(f"{prefix}.{k}" if prefix else k, hints[k], v) for k, v in raw.items()}
    return cls(**kwargs)


def build_section(cls, raw: dict, prefix: str):
    """``raw`` (a mapping from params.yaml) checked against the dataclass ``cls``; errors name ``prefix.key``."""
    return _build(cls, raw or {}, prefix)


def _positive(key: str, value, strict: bool = True):
    if (value <= 0) if strict else (value < 0):
        raise ParamsError(key, f"must be {'>' if strict else '>='} 0, got {value}")


def _choice(key: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ParamsError(key, f"unknown name {value!r}; allowed: {', '.join(sorted(allowed))}")


def validate(p: Params) -> Params:
    """Range and name checks that a type annotation cannot express."""
    from kdlab.data import DATASETS
    from kdlab.distill import names as method_names
    from kdlab.models import ARCHS

    methods = method_names()
    _choice("data.name", p.data.name, DATASETS)
    _positive("data.val_size", p.data.val_size)
    s = p.data.synthetic
    for k in ("n_train", "n_test", "image_size", "channels"):
        _positive(f"data.synthetic.{k}", getattr(s, k))
    if s.classes < 2:
        raise ParamsError("data.synthetic.classes", f"must be >= 2, got {s.classes}")
    _positive("views.pad", p.views.pad, strict=False)
    from kdlab.data import SHAPES

    channels, size, n_train = SHAPES.get(p.data.name, (s.channels, s.image_size, s.n_train))
    if p.data.val_size >= n_train and p.data.name != "synthetic":
        raise ParamsError("data.val_size", f"{p.data.val_size} leaves no training images ({p.data.name} has "
                          f"{n_train}); use fewer than {n_train}")
    if p.data.name == "synthetic" and s.n_train < 5:  # its validation split is a fifth of n_train at most
        raise ParamsError("data.synthetic.n_train", f"{s.n_train} leaves no validation images (the synthetic "
                          f"validation split is min(data.val_size, n_train // 5)); use at least 5")
    _seed("data.split_seed", p.data.split_seed)
    if 2 * p.views.pad >= size:
        raise ParamsError("views.pad", f"{p.views.pad} shifts {p.data.name}'s {size}x{size} images out of the frame; "
                          f"use at most {(size - 1) // 2}")
    for role in ("teacher", "student"):
        m = getattr(p, role)
        _choice(f"{role}.arch", m.arch, ARCHS)
        _positive(f"{role}.width", m.width)
        if m.width != 1.0 and not ARCHS[m.arch].has_width:
            raise ParamsError(f"{role}.width", f"{m.arch} has no width multiplier; use 1.0 or one of "
                              f"{', '.join(sorted(a for a, s in ARCHS.items() if s.has_width))}")
        _positive(f"{role}.epochs", m.epochs)
        if m.epochs > MAX_EPOCHS:
            raise ParamsError(f"{role}.epochs", f"{m.epochs} is more than {MAX_EPOCHS:,}")
        _positive(f"{role}.lr", m.lr)
        _seed(f"{role}.seed", m.seed)
    t = p.train
    _positive("train.batch_size", t.batch_size)
    _positive("train.eval_batch_size", t.eval_batch_size)
    _positive("train.weight_decay", t.weight_decay, strict=False)
    if not 0 <= t.momentum < 1:
        raise ParamsError("train.momentum", f"must be in [0, 1), got {t.momentum}")
    if not 0 <= t.warmup < 1:
        raise ParamsError("train.warmup", f"must be in [0, 1), got {t.warmup}")
    if not 0 <= t.label_smoothing < 1:
        raise ParamsError("train.label_smoothing", f"must be in [0, 1), got {t.label_smoothing}")
    _positive("train.threads", t.threads, strict=False)
    _positive("train.nproc", t.nproc)
    if t.batch_size % t.nproc:
        raise ParamsError("train.batch_size", f"{t.batch_size} does not divide by train.nproc={t.nproc} "
                          f"(each process takes an equal slice of every batch)")
    from kdlab.data import split_sizes

    last = split_sizes(p.data)["train"] % t.batch_size
    if 0 < last < t.nproc:
        raise ParamsError("train.batch_size", f"{t.batch_size} leaves a last batch of {last} training images, "
                          f"fewer than train.nproc={t.nproc}; choose another batch size or data.val_size")
    if not 0 <= p.loss.alpha <= 1:
        raise ParamsError("loss.alpha", f"must be in [0, 1], got {p.loss.alpha}")
    _positive("loss.temperature", p.loss.temperature)
    if p.cache.views != "all":
        from kdlab.views import num_views

        total = num_views(p.views.pad, p.views.flip)
        if not 1 <= p.cache.views <= total:
            raise ParamsError("cache.views", f"must be 'all' or an integer in [1, {total}] "
                              f"(views.pad={p.views.pad}, views.flip={p.views.flip} give {total} views), "
                              f"got {p.cache.views}")
    _positive("cache.batch_size", p.cache.batch_size)
    _seed("cache.seed", p.cache.seed)
    if not p.study.variants:
        raise ParamsError("study.variants", "is empty; list at least one of "
                          + ", ".join(m for m in methods if m != BASELINE))
    distillers = [m for m in methods if m != BASELINE]
    for i, v in enumerate(p.study.variants):
        if v == BASELINE:
            raise ParamsError(f"study.variants[{i}]", f"{BASELINE!r} is the baseline, trained by the `baseline` "
                              f"stage in every study; list only distillation variants: {', '.join(distillers)}")
        _choice(f"study.variants[{i}]", v, distillers)
    if len(set(p.study.variants)) != len(p.study.variants):
        raise ParamsError("study.variants", f"has duplicates: {p.study.variants}")
    if not p.study.seeds:
        raise ParamsError("study.seeds", "is empty; give at least one seed, e.g. [0, 1, 2]")
    if len(p.study.seeds) > MAX_SEEDS:
        raise ParamsError("study.seeds", f"has {len(p.study.seeds)} seeds; at most {MAX_SEEDS} are allowed")
    if len(set(p.study.seeds)) != len(p.study.seeds):
        raise ParamsError("study.seeds", f"has duplicates: {p.study.seeds}")
    for i, s_ in enumerate(p.study.seeds):
        _seed(f"study.seeds[{i}]", s_)
    for name in p.methods:
        _choice(f"methods.{name}", name, methods)
    pp = p.parts
    _choice("parts.method", pp.method, distillers)
    if not pp.stages:
        raise ParamsError("parts.stages", "is empty; list the stages to place the feature loss at, e.g. [layer1, layer2]")
    for i, st in enumerate(pp.stages):
        if not re.fullmatch(r"layer\d+(\.\d+)?", st):
            raise ParamsError(f"parts.stages[{i}]", f"{st!r} is not a stage path; use layerN or layerN.B (a block)")
    if len(set(pp.stages)) != len(pp.stages):
        raise ParamsError("parts.stages", f"has duplicates: {pp.stages}")
    if not pp.init:
        raise ParamsError("parts.init", "is empty; list at least one carved student, e.g. [init_teacher, init_random]")
    for i, v in enumerate(pp.init):
        _choice(f"parts.init[{i}]", v, distillers)
    _positive("parts.cka_images", pp.cka_images)
    pr = p.prune
    _choice("prune.criterion", pr.criterion, PRUNE_CRITERIA)
    for i, c in enumerate(pr.compare):
        _choice(f"prune.compare[{i}]", c, PRUNE_CRITERIA)
        if c == pr.criterion:
            raise ParamsError(f"prune.compare[{i}]", f"{c!r} is prune.criterion itself; list the criteria to "
                              f"compare it with")
    if len(set(pr.compare)) != len(pr.compare):
        raise ParamsError("prune.compare", f"has duplicates: {pr.compare}")
    if not pr.sizes:
        raise ParamsError("prune.sizes", "is empty; give target sizes as multiples of the student's parameter "
                          "count, e.g. [1.0, 0.5]")
    for i, size in enumerate(pr.sizes):
        _positive(f"prune.sizes[{i}]", size)
    if len(set(pr.sizes)) != len(pr.sizes):
        raise ParamsError("prune.sizes", f"has duplicates: {pr.sizes}")
    _positive("prune.steps", pr.steps)
    if pr.steps > 1000:  # fine-tuning draws its batches from epochs 1000 x step of the teacher's seed
        raise ParamsError("prune.steps", f"{pr.steps} is more than 1000")
    _positive("prune.finetune_steps", pr.finetune_steps, strict=False)
    _positive("prune.calibration_images", pr.calibration_images)
    if not 0 < pr.max_ratio < 1:
        raise ParamsError("prune.max_ratio", f"must be in (0, 1), got {pr.max_ratio}")
    return p


def _seed(key: str, value: int) -> None:
    if not 0 <= value < SEED_LIMIT:
        raise ParamsError(key, f"must be in [0, 2**32), got {value}")


def check_with_models(p: Params, raw_methods: dict | None = None, source: str = "params.yaml") -> Params:
    """The checks that need torch: every method's options (not only study.variants': the question-2 and -3
    stages build others), the device, and what the teacher and student architectures must have: the stages
    and blocks that taps and carving name, and a teacher larger than every pruning target. With
    ``raw_methods`` (the file's ``methods`` mapping), every option of every method must be set there."""
    import torch

    from kdlab import distill, runtime
    from kdlab.data import CLASSES, SHAPES
    from kdlab.features import check_paths
    from kdlab.models import build, count_params
    from kdlab.surgery import keep_blocks

    runtime.device(p.train.device)  # cuda without a GPU
    methods = {name: distill.build(name, p) for name in distill.names()}  # each checks its options
    if raw_methods is not None:
        for m in methods.values():
            given = raw_methods.get(m.options_name) or {}
            unset = [f"methods.{m.options_name}.{f.name}" for f in dataclasses.fields(m.Options) if f.name not in given]
            if unset:
                raise ParamsError(source, f"does not set {', '.join(unset)}; every key must be set: add them, or "
                                  f"restore the shipped file with `git checkout -- {source}`")
    s = p.data.synthetic
    channels = SHAPES.get(p.data.name, (s.channels,))[0]
    classes = CLASSES.get(p.data.name, s.classes)
    with torch.device("meta"):  # shapes and parameter counts only: nothing is allocated
        teacher = build(p.teacher.arch, channels, classes, p.teacher.width)
        student = build(p.student.arch, channels, classes, p.student.width)
        taps = {f"methods.{m.options_name}.stages": m.opts.stages
                for m in methods.values() if hasattr(m.opts, "stages")}
        for key, paths in {**taps, "parts.stages": p.parts.stages}.items():
            for role, model in (("teacher", teacher), ("student", student)):
                check_paths(model, paths, key, role)
        keep_blocks(teacher, methods["init_teacher"].blocks(teacher), "methods.init_teacher.keep")
        carved = keep_blocks(teacher, p.prune.keep, "prune.keep") if p.prune.keep else teacher
        unit, largest = count_params(student), count_params(carved)
        for i, size in enumerate(p.prune.sizes):
            if round(size * unit) >= largest:
                raise ParamsError(f"prune.sizes[{i}]", f"{size} x the student's {unit:,} parameters is not below "
                                  f"the {largest:,} of the teacher{' carved by prune.keep' if p.prune.keep else ''}, "
                                  f"so it would prune nothing; use a size below {largest / unit:.2f}")
    return p


def parse_override(text: str) -> tuple[str, object]:
    """``loss.alpha=0.7`` -> ("loss.alpha", 0.7); the value is read as YAML."""
    if "=" not in text:
        raise ParamsError(text, "an override must look like key=value, e.g. loss.alpha=0.7")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def _apply(raw: dict, key: str, value) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ParamsError(key, f"{part} is not a mapping")
    node[parts[-1]] = value


def from_dict(raw: dict | None, overrides: list[str] = ()) -> Params:
    raw = dict(raw or {})
    for text in overrides:
        _apply(raw, *parse_override(text))
    return validate(_build(Params, raw))


def load(path: str | Path = "params.yaml", overrides: list[str] = (), full: bool = False) -> Params:
    """The params file, complete (every key set: the built-in defaults are not the shipped study's) and
    validated. ``full`` (``kdlab check``, the pipeline's first stage) adds :func:`check_with_models`: every
    method's options and what the architectures must have. Every stage runs the rest; only the check stage
    imports every method, so editing one method file re-runs the check (seconds), not the whole study."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(str(path), "not found; run kdlab from the repository root (where params.yaml is), or "
                          "restore it with `git checkout -- params.yaml`")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ParamsError(str(path), f"is not valid YAML: {e}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(str(path), "must be a mapping of sections (data, teacher, student, ...)")
    missing = missing_keys(Params, raw or {})
    if missing:
        shown = ", ".join(missing[:12]) + (f" and {len(missing) - 12} more" if len(missing) > 12 else "")
        raise ParamsError(str(path), f"does not set {shown}; every key must be set (kdlab's built-in defaults "
                          f"are not the shipped study's): add them, or restore the shipped file with "
                          f"`git checkout -- {path}`")
    p = from_dict(raw, overrides)
    return check_with_models(p, (raw or {}).get("methods") or {}, str(path)) if full else p


def missing_keys(cls, raw: dict, prefix: str = "") -> list[str]:
    """Dotted keys of the dataclass ``cls`` that ``raw`` does not set (a missing section counts once)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.name not in raw:
            out.append(key)
        elif dataclasses.is_dataclass(hints[f.name]) and isinstance(raw[f.name], dict):
            out += missing_keys(hints[f.name], raw[f.name], key + ".")
    return out


def flatten(obj, prefix: str = "") -> dict[str, object]:
    """Dataclass tree -> {"loss.alpha": 0.5, ...} for tracking."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        k = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(v):
            out.update(flatten(v, k + "."))
        elif isinstance(v, dict):
            out.update(_flatten_dict(v, k + "."))
        else:
            out[k] = v
    return out


def _flatten_dict(d: dict, prefix: str) -> dict[str, object]:
    out = {}
    for k, v in d.items():
        out.update(_flatten_dict(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out
