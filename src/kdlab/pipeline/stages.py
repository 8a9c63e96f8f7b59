"""The default study's training runs (``kdlab train RUN``): the teacher, the students of every variant (and of
the question-2 and question-3 studies), each a :class:`kdlab.pipeline.spec.RunSpec` built from params.yaml and
trained by :func:`kdlab.pipeline.train.train`. A run is named by its model file under ``models/``: ``teacher``,
``students/kd-0``, ``parts/fitnet.layer2-0``, ``pruned/prune.l1.x1.0.kd-0``."""
from __future__ import annotations

from functools import partial
from typing import Callable

from kdlab import distill
from kdlab.pipeline.params import BASELINE, Params
from kdlab.infra.schema import ParamsError
from kdlab.pipeline.spec import RunSpec, Source
from kdlab.pipeline.workspace import CACHE_FILE, METRICS, PRUNED_TEACHERS, TEACHER, TEACHER_FILE, run_files

INITS = ("prune", "shape")
VARIANTS = ("kd", BASELINE)


def pruned_models(p: Params) -> list[tuple[str, float]]:
    """(criterion, size) of every pruned teacher the study needs."""
    first = p.prune.sizes[0]
    return [(p.prune.criterion, s) for s in p.prune.sizes] + [(c, first) for c in p.prune.compare]


def model_name(criterion: str, size: float) -> str:
    return f"{criterion}.x{float(size)}"  # x1.0, x0.5: as dvc.yaml writes ${item.size}


def run_name(init: str, criterion: str, size: float, variant: str) -> str:
    """``prune.activation.x1.0.kd``: the pruned weights, trained with KD; ``shape...``: that shape, re-initialised."""
    return f"{init}.{model_name(criterion, size)}.{variant}"


def groups(p: Params) -> list[tuple[str, float, str, str]]:
    """(criterion, size, init, variant) of every student group of the study, in the table's order."""
    out = [(p.prune.criterion, s, init, v) for s in p.prune.sizes for init in INITS for v in VARIANTS]
    return out + [(c, p.prune.sizes[0], "prune", "kd") for c in p.prune.compare]


def stage_of(p: Params, criterion: str, size: float, init: str, variant: str, seed: int) -> str:
    if criterion != p.prune.criterion:
        return f"criteria@{criterion}-{seed}"
    return f"{'pruned_student' if variant == 'kd' else 'pruned_student_raw'}@{float(size)}-{init}-{seed}"


def teacher_spec(p: Params) -> RunSpec:
    return RunSpec("teacher", "teacher", p.teacher, p.teacher.seed, (TEACHER, METRICS / "teacher.json"),
                   all_views=True, log_model=True)


def part_name(variant: str, at: str | None) -> str:
    """``fitnet`` tapped at ``layer2`` is run ``fitnet.layer2``."""
    return f"{variant}.{at}" if at else variant


def student_spec(p: Params, variant: str, seed: int, at: str | None = None, parts: bool = False) -> RunSpec:
    """One student of the distillation method ``variant``; ``at``: tap only this layer (for the methods with
    ``layers``, in the question-2 study); ``parts``: a student of the question-2 study (models/parts)."""
    name = part_name(variant, at)
    builds = distill.method_class(variant).builds_from_teacher
    about = "" if not parts else (f"Question 2: {variant}'s feature loss at `{at}` only. " if at else
                                  "Question 2: carved out of the teacher's blocks. " if builds else
                                  "Question 2: the carved shape, randomly initialised. ")
    files = run_files(name, seed, "parts" if parts else "students")
    return RunSpec(f"{name}-{seed}", "student", p.student, seed, files, variant, {"layers": [at]} if at else {},
                   teacher=TEACHER_FILE, teacher_model=p.teacher, cache=CACHE_FILE, tags={"variant": name},
                   log_model=not parts, about=about)


def pruned_spec(p: Params, size: float, criterion: str, init: str, variant: str, seed: int) -> RunSpec:
    """One student: the teacher pruned by ``criterion`` to ``size`` (``init=prune``) or that shape freshly
    initialised (``init=shape``), trained with ``variant`` (kd or raw)."""
    if init not in INITS:
        raise ParamsError("--init", f"unknown {init!r}; allowed: {', '.join(INITS)}")
    cls = distill.method_class(variant)
    if cls.uses_teacher_model or cls.builds_from_teacher:
        raise ParamsError("--variant", f"{variant} needs the teacher itself; a pruned student trains with a "
                          f"logits method or on labels ({', '.join(VARIANTS)})")
    name = run_name(init, criterion, size, variant)
    start = "with its pruned weights" if init == "prune" else "that shape freshly initialised"
    about = f"Question 3: the teacher pruned by `{criterion}` to x{size} of the student's parameters, {start}. "
    return RunSpec(f"{name}-{seed}", "student", p.student, seed, run_files(name, seed, "pruned"), variant,
                   init="pruned" if init == "prune" else "shape",
                   pruned=Source(PRUNED_TEACHERS / f"{model_name(criterion, size)}.pt", "dvc repro prune_teacher"),
                   teacher=TEACHER_FILE, cache=CACHE_FILE,
                   tags={"variant": name, "init": init, "criterion": criterion, "size": size}, about=about)


def runs(p: Params) -> dict[str, Callable[[], RunSpec]]:
    """Every training run of the study, by name (its model file under models/, without ``.pt``)."""
    out: dict[str, Callable[[], RunSpec]] = {"teacher": partial(teacher_spec, p)}
    for seed in p.study.seeds:
        for v in (BASELINE, *p.study.variants):
            out[f"students/{v}-{seed}"] = partial(student_spec, p, v, seed)
        for at in p.parts.layers:
            name = part_name(p.parts.method, at)
            out[f"parts/{name}-{seed}"] = partial(student_spec, p, p.parts.method, seed, at, True)
        for v in p.parts.init:
            out[f"parts/{v}-{seed}"] = partial(student_spec, p, v, seed, None, True)
        for criterion, size, init, variant in groups(p):
            out[f"pruned/{run_name(init, criterion, size, variant)}-{seed}"] = partial(pruned_spec, p, size, criterion,
                                                                                    init, variant, seed)
    return out
