"""What every named study (``studies/<name>``: its own params section and ``dvc.yaml``) shares: its teacher
runs and student architecture as params, its seeded subset, and its teachers' runs as
:class:`kdlab.pipeline.train.RunSpec`."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from kdlab.pipeline.params import ModelParams
from kdlab.pipeline.spec import RunSpec, Subset


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


def subset(q) -> Subset:
    """A named study's subsets (its params ``train_images``, ``val_images`` and ``subset_seed``)."""
    return Subset(q.train_images, q.val_images, q.subset_seed)


def teacher_spec(q, name: str, out: Path, metrics_dir: Path, study: str, extra: dict) -> RunSpec:
    """The named study ``q``'s teacher run ``q.teachers[name]``, on the labels, into ``out`` (``final.pt``, and
    ``e<k>.pt`` for each of its snapshots) and ``metrics_dir/<name>.json`` (with ``<name>.curve.json``: its
    validation curve); ``study``: the study's name in run names and tags (``q1``)."""
    t = q.teachers[name]
    about = (f"The {study} study's teacher `{name}` ({q.train_images} training images)"
             + (f", with snapshots at epochs {t.snapshots}. " if t.snapshots else ". "))
    return RunSpec(f"{study}-teacher-{name}", "teacher", ModelParams(t.arch, t.width, t.epochs, t.lr, t.seed, "auto"),
                   t.seed, (out / "final.pt", metrics_dir / f"{name}.json"), subset=subset(q), all_views=True,
                   snapshots=tuple(t.snapshots), snapshot_dir=out, snapshot_as_model=True,
                   curve=metrics_dir / f"{name}.curve.json", record={"teacher": name}, tags={f"{study}_teacher": name},
                   about=about, extra=extra)
