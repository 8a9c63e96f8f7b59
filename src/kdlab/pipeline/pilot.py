"""The recipe pilot of a named study (issue 29; ``kdlab pilot --study FILE``; its params, the study's ``pilot``
section, are :class:`kdlab.pipeline.study.Pilot`):
before the study's arms run, each candidate training recipe (peak lr, schedule and warm-up, batch size, an
average of the weights, the views the students cache) trains the study's teacher, caches its logits and trains
the student on the labels and with KD over the pilot's seeds, on the study's training subset. Everything is
measured on the validation split alone (the runs are never tested); :mod:`kdlab.analysis.pilot` tables each
recipe's seed SD and curve smoothness, adopts one by the rule the params declare, and turns its SD into seeds.

A recipe's teacher, cache and students are scratch (``checkpoints/pilot/``: no later stage reads them); what the
pilot keeps is each run's metrics and validation curve under ``metrics/<study>/pilot/<recipe>/``. A run whose
curve file already records the same recipe, budget and code is not trained again, so an interrupted pilot
resumes.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from kdlab.infra import io
from kdlab.infra.schema import ParamsError, build, flatten_dict, read_yaml
from kdlab.pipeline.params import ModelParams, Params, with_overrides
from kdlab.pipeline.spec import RunSpec, Source, Subset
from kdlab.pipeline.study import Pilot, Recipe

SCRATCH = Path("checkpoints/pilot")


@dataclasses.dataclass(frozen=True)
class PilotStudy:
    """What the pilot reads of a named study's params file: its name (the file's one section), its ``pilot``
    (with the pilot's own teacher and student architectures) and its training subset."""
    name: str
    pilot: Pilot
    teacher: ModelParams
    student: ModelParams
    train_images: int
    subset_seed: int

    @property
    def metrics(self) -> Path:
        return Path("metrics") / self.name

    @property
    def report(self) -> Path:
        return Path("reports") / self.name / "pilot.md"

    def logged(self) -> dict:
        """The params each pilot run logs and resumes by (besides the default study's)."""
        return flatten_dict({"pilot": dataclasses.asdict(self.pilot), "train_images": self.train_images,
                             "subset_seed": self.subset_seed}, f"{self.name}.")


def load(path: Path) -> PilotStudy:
    """The pilot of the named study ``path`` (``studies/q1/params.yaml``), checked; the rest of the file is its
    study's to check. Reads no study module and none of the study's design (its teachers, student, arms):
    the pilot comes first, and changing the design after it does not re-run it."""
    raw = read_yaml(Path(path)) or {}
    if len(raw) != 1:
        raise ParamsError(str(path), "a named study's params file holds exactly one section")
    (name, sec), = raw.items()
    if not isinstance(sec, dict) or "pilot" not in sec:
        raise ParamsError(f"{name}.pilot", f"{path} declares no pilot")
    for key in ("train_images", "subset_seed"):
        if key not in sec:
            raise ParamsError(f"{name}.{key}", "the pilot reads it; not set")
    pilot = build(Pilot, sec["pilot"], f"{name}.pilot")
    pilot.check(f"{name}.pilot")
    models = {}
    for role in ("teacher", "student"):
        m = getattr(pilot, role)
        models[role] = ModelParams(m.arch, m.width, pilot.epochs, 0.1, m.seed, "auto")  # lr: each recipe's
        models[role].check(f"{name}.pilot.{role}")
    if not isinstance(sec["train_images"], int) or sec["train_images"] < 1:
        raise ParamsError(f"{name}.train_images", f"a positive number of images, got {sec['train_images']!r}")
    return PilotStudy(name, pilot, models["teacher"], models["student"], sec["train_images"], int(sec["subset_seed"]))


def recipe_params(p: Params, r: Recipe) -> Params:
    """``p`` with the recipe's ``train.*`` and ``cache.views``."""
    return with_overrides(p, r.overrides())


def steps_per_epoch(images: int, r: Recipe) -> int:
    return -(-images // r.batch_size)


def run_dir(metrics: Path, name: str) -> Path:
    return metrics / "pilot" / name


def _done(curve: Path, record: dict) -> bool:
    if not curve.exists():
        return False
    have = json.loads(curve.read_text())
    return {k: have.get(k) for k in record} == record


def _rebuild(study: PilotStudy, name: str) -> str:
    return f"rm -r {SCRATCH / study.name / name} {run_dir(study.metrics, name)}  # then rerun the pilot"


def recipe_runs(study: PilotStudy, name: str, r: Recipe, record: dict) -> list[RunSpec]:
    """The runs of the pilot's recipe ``name``: its teacher, then the student of every arm and seed; each trains
    with the recipe (``overrides``) and writes its curve file with ``record`` (plus its arm and seed)."""
    pilot, study_name = study.pilot, study.name
    sub = Subset(study.train_images, pilot.val_images, study.subset_seed)
    out, scratch = run_dir(study.metrics, name), SCRATCH / study_name / name
    rebuild = _rebuild(study, name)
    teacher_file, cache_file = scratch / "teacher.pt", scratch / "cache.pt"
    common = {"subset": sub, "test": False, "about": f"The {study_name} pilot's recipe `{name}`. ",
              "extra": study.logged(), "overrides": r.overrides()}
    specs = [RunSpec(f"{study_name}-pilot-{name}-teacher", "teacher",
                     dataclasses.replace(study.teacher, epochs=pilot.epochs, lr=r.lr), study.teacher.seed,
                     (teacher_file, out / "teacher.json"), all_views=True, curve=out / "teacher.curve.json",
                     record={**record, "arm": "teacher", "seed": study.teacher.seed}, tags={"pilot_recipe": name},
                     **common)]
    s_model = dataclasses.replace(study.student, epochs=pilot.epochs, lr=r.lr)
    for arm in pilot.arms:
        for seed in pilot.seeds:
            run, reads = f"{arm}-s{seed}", arm != "raw"
            specs.append(RunSpec(f"{study_name}-pilot-{name}-{run}", "student", dataclasses.replace(s_model, seed=seed),
                                 seed, (scratch / f"{run}.pt", out / f"{run}.json"), arm,
                                 teacher=Source(teacher_file, rebuild) if reads else None,
                                 cache=Source(cache_file, rebuild) if reads else None,
                                 curve=out / f"{run}.curve.json", record={**record, "arm": arm, "seed": seed},
                                 tags={"pilot_recipe": name, "method": arm}, **common))
    return specs


def run_pilot(p: Params, study: PilotStudy) -> None:
    """Train every run of the pilot that is not done yet (see the module's docstring)."""
    from kdlab.pipeline.cache import write_cache
    from kdlab.pipeline.train import train
    from kdlab.pipeline.workspace import context, model_from_checkpoint

    code = io.code_digest()  # a run of other code is trained again, as a checkpoint of other code is not resumed
    for name, r in study.pilot.recipes.items():
        record = {"recipe": dataclasses.asdict(r), "epochs": study.pilot.epochs,
                  "steps": study.pilot.epochs * steps_per_epoch(study.train_images, r), "code": code}
        teacher, *students = recipe_runs(study, name, r, record)
        teacher_file = teacher.files[0]
        scratch = teacher_file.parent
        if not (_done(teacher.curve, teacher.record) and (scratch / "cache.pt").exists()):
            train(p, teacher)
            pr = recipe_params(p, r)
            ctx = context(pr, pr.cache.seed, teacher.subset)
            write_cache(pr, ctx, model_from_checkpoint(io.load_torch(teacher_file, _rebuild(study, name)), ctx),
                        teacher_file, scratch / "cache.pt", scratch / "cache.partial", teacher.subset)
        for s in students:
            if not _done(s.curve, s.record):
                train(p, s)
