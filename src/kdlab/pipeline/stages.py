"""The default study's training stages, ``kdlab teacher`` and ``kdlab student --variant V --seed S`` (and
``kdlab part``, a student of the question-2 study): each builds its run's :class:`kdlab.pipeline.train.RunSpec`
from params.yaml and trains it with :func:`kdlab.pipeline.train.train`."""
from __future__ import annotations

from kdlab import distill
from kdlab.pipeline.params import Params
from kdlab.pipeline.spec import RunSpec
from kdlab.pipeline.train import train
from kdlab.pipeline.workspace import CACHE_FILE, METRICS, TEACHER, TEACHER_FILE, run_files


def run_teacher(p: Params) -> dict:
    return train(p, RunSpec("teacher", "teacher", p.teacher, p.teacher.seed, (TEACHER, METRICS / "teacher.json"),
                            all_views=True, log_model=True))


def part_name(variant: str, at: str | None) -> str:
    """``fitnet`` tapped at ``layer2`` is run ``fitnet.layer2``."""
    return f"{variant}.{at}" if at else variant


def run_student(p: Params, variant: str, seed: int, at: str | None = None, parts: bool = False) -> dict:
    """Train one student with the distillation method ``variant``; ``at``: tap only this layer (for the
    methods with ``layers``, in the question-2 study)."""
    name = part_name(variant, at)
    builds = distill.method_class(variant).builds_from_teacher
    about = "" if not parts else (f"Question 2: {variant}'s feature loss at `{at}` only. " if at else
                                  "Question 2: carved out of the teacher's blocks. " if builds else
                                  "Question 2: the carved shape, randomly initialised. ")
    files = run_files(name, seed, "parts" if parts else "students")
    return train(p, RunSpec(f"{name}-{seed}", "student", p.student, seed, files, variant, {"layers": [at]} if at else {},
                            teacher=TEACHER_FILE, teacher_model=p.teacher, cache=CACHE_FILE, tags={"variant": name}, log_model=not parts, about=about))
