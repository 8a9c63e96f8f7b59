"""The training stages, ``kdlab teacher`` and ``kdlab student --variant V --seed S`` (and ``kdlab part``, a
student of the question-2 study), and :func:`train_run`, which trains and writes one run for every training
stage (the question-3 students included)."""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kdlab import distill
from kdlab.core import models, views
from kdlab.core.loader import TrainBatches
from kdlab.core.train import accuracy, fit, predict
from kdlab.infra import distributed, io, tracking
from kdlab.infra.schema import flatten
from kdlab.pipeline.params import ModelParams, Params
from kdlab.pipeline.workspace import (
    CHECKPOINTS,
    METRICS,
    TEACHER,
    Context,
    build_model,
    context,
    load_teacher,
    memory_format,
    run_files,
    train_batches,
)


@dataclass
class Run:
    """One training run, as :func:`train_run` takes it."""
    #: ``kd-0``: the checkpoint's, the log's and the MLflow run's name
    name: str
    #: "teacher" or "student" (the MLflow run's stage)
    role: str
    #: epochs and lr (and, unless ``arch`` says otherwise, the architecture the model file records)
    spec: ModelParams
    seed: int
    method: torch.nn.Module
    batches: TrainBatches
    model: torch.nn.Module
    #: (model file, metrics file)
    files: tuple[Path, Path]
    #: logged as params and saved in the model file: variant, init...
    tags: dict = field(default_factory=dict)
    #: hashes of the inputs that a resumed checkpoint must match too (teacher, cache, pruned model)
    resume_key: dict = field(default_factory=dict)
    #: how :func:`kdlab.pipeline.workspace.load_model` rebuilds the model (default: ``spec``'s arch and width)
    arch: dict | None = None
    #: also log the trained model to MLflow (the teacher and question 1's students: the models a user takes away)
    log_model: bool = False
    #: what was trained, in a sentence, for the MLflow run page (after the generic description)
    about: str = ""
    #: the distillation method's name when ``tags["variant"]`` is a longer run name (question 3)
    method_name: str | None = None
    #: a named study's own params (question 1's ``q1.*``): logged with the run's, and part of its study's key
    extra: dict = field(default_factory=dict)


#: the prepared splits as the MLflow datasets every training run reads
DATASET_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}


def describe(p: Params, run: Run) -> str:
    """The MLflow run page's description of a training run: what was trained, how, and how it was chosen."""
    spec = run.spec
    arch = run.arch or {"arch": spec.arch, "width": spec.width}
    variant = run.method_name or run.tags.get("variant", "raw")
    how = ("on the labels alone (cross-entropy)" if variant == "raw" else
           f"with `{variant}` (KD weight loss.alpha={p.loss.alpha}, temperature {p.loss.temperature}; a method's "
           f"own options are the `methods.*` params)")
    return (f"{run.role.capitalize()} `{run.name}` of stage `{os.environ.get('DVC_STAGE') or run.role}`: "
            f"`{arch['arch']}` at width {arch['width']}, {spec.epochs} epochs at lr {spec.lr}, seed {run.seed}, "
            f"trained {how} on {p.data.name}. {run.about}The kept checkpoint is the best epoch on the validation "
            f"split (tag `best_epoch`); `test_acc` is that checkpoint's, measured once. Per-epoch curves: "
            f"`val_acc`, `loss`, `loss/*`; per step: `train_loss`.")


def fingerprint(p: Params, ctx: Context, run: Run) -> str:
    """What a checkpoint must match to be resumed: params, run, data, tags, input hashes and the code."""
    blob = json.dumps({"params": {**flatten(p), **run.extra}, "run": run.name, "data": ctx.meta["sha256"], "code": io.code_digest(),
                       **run.tags, **run.resume_key},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def train_run(p: Params, ctx: Context, run: Run) -> dict:
    """Train ``run.model`` with ``run.method``, keep its best-on-validation state, test it and write the model
    and metrics files and the MLflow run; returns the metrics (empty on ranks other than 0)."""
    model, spec = run.model, run.spec
    arch = run.arch or {"arch": spec.arch, "width": spec.width}
    model_path, metrics_path = run.files
    checkpoint = CHECKPOINTS / f"{run.name}.pt"
    val = (ctx.splits["val"]["images"], ctx.splits["val"]["labels"])
    test = (ctx.splits["test"]["images"], ctx.splits["test"]["labels"])
    start = time.perf_counter()
    with tracking.run(run.role, run.name, {**flatten(p), **run.extra}, {**run.tags, "seed": run.seed}, describe(p, run)) as logged:
        logged.log_dataset(ctx.meta, DATASET_CONTEXTS)
        steps_per_epoch = len(run.batches)

        def on_epoch(row):
            logged.log({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])

        def on_steps(epoch, losses):  # x: the global step, as in every training-loss plot
            first = (epoch - 1) * steps_per_epoch + 1
            logged.log_steps({"train_loss": [(first + i, v) for i, v in enumerate(losses)]})

        res = fit(model, run.method, run.batches, val, spec.epochs, spec.lr, p.train, run.name, on_epoch, checkpoint,
                  fingerprint(p, ctx, run), on_steps)
        if not distributed.is_main():  # rank 0 alone tests, writes and logs
            return {}
        model.load_state_dict(res.last_state)
        bs, prec = p.train.eval_batch_size, p.train.precision
        test_acc_last = accuracy(predict(model, *test, ctx.normalize, bs, prec), test[1])
        model.load_state_dict(res.best_state)
        test_acc = accuracy(predict(model, *test, ctx.normalize, bs, prec), test[1])
        metrics = {
            "val_acc": res.best_val_acc, "test_acc": test_acc, "best_epoch": res.best_epoch,
            "val_acc_last": res.last_val_acc, "test_acc_last": test_acc_last, "epochs": spec.epochs,
            "params": models.count_params(model), "train_seconds": res.train_seconds,
            "wall_seconds": time.perf_counter() - start,
        }
        if res.compiled and res.first_step_seconds is not None:  # torch.compile's cost, apart from training
            metrics["compile_seconds"] = res.first_step_seconds
        io.save_torch({
            **arch, "in_channels": ctx.meta["channels"],
            "classes": ctx.meta["classes"], "state_dict": res.best_state, "seed": run.seed,
            "history": res.history, "metrics": metrics, "data_sha256": ctx.meta["sha256"], **run.tags,
        }, model_path)
        io.save_json(metrics, metrics_path)
        # "val_acc" is the per-epoch curve in MLflow; the chosen epoch's value goes in as best_val_acc. What
        # describes the run rather than measures it is a tag; the metrics file's hash lets a later study that
        # reuses this output (a DVC experiment) link this run in (tracking.Run.link_reused)
        metadata = ("best_epoch", "epochs", "params")
        logged.log({("best_val_acc" if k == "val_acc" else k): v for k, v in metrics.items() if k not in metadata})
        logged.set_tags({"best_epoch": res.best_epoch, "model_params": metrics["params"],
                         "kdlab.metrics_sha256": io.sha256(metrics_path)})
        logged.log_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", "metrics.json")
        if run.log_model and run.arch is None:
            _log_model(p, ctx, run, res.best_state, logged)
    # only once the run is logged and closed: a tracking failure above leaves the checkpoint, and a rerun
    # resumes after the last epoch instead of training again
    checkpoint.unlink(missing_ok=True)
    print(f"{run.name}: val {metrics['val_acc']:.4f} (epoch {res.best_epoch}) test {test_acc:.4f} "
          f"in {metrics['wall_seconds']:.0f}s")
    return metrics


def _log_model(p: Params, ctx: Context, run: Run, state: dict, logged) -> None:
    """The kept checkpoint as an MLflow model: rebuilt from its architecture (so no training hooks are traced),
    on the CPU, with 8 normalized validation images as the signature's example."""
    with torch.random.fork_rng(devices=[]):  # building a model draws initial weights: leave the stream as it was
        clean = models.build(run.spec.arch, ctx.meta["channels"], ctx.meta["classes"], run.spec.width)
    clean.load_state_dict({k: v.float().cpu() for k, v in state.items()})
    example = ctx.normalize(ctx.splits["val"]["images"][:8].to(ctx.device)).float().cpu().contiguous()
    mean, std = ctx.meta["mean"], ctx.meta["std"]
    about = (f"kdlab {run.name} ({run.spec.arch} x{run.spec.width}, {p.data.name}): takes images scaled to [0, 1], "
             f"then normalized by mean {mean} and std {std}")
    logged.log_model(clean.eval(), example, about)


def run_teacher(p: Params) -> dict:
    ctx = context(p, p.teacher.seed)
    train = ctx.splits["train"]
    table = views.view_table(len(train["labels"]), p.views.pad, p.views.flip, "all", 0)
    batches = TrainBatches(train["images"], train["labels"], ctx.normalize, p.train.batch_size, p.views.pad,
                           table, seed=p.teacher.seed, rank=distributed.rank(), world=distributed.world())
    return train_run(p, ctx, Run("teacher", "teacher", p.teacher, p.teacher.seed, distill.build("raw", p), batches,
                                 build_model(p.teacher, ctx), (TEACHER, METRICS / "teacher.json"), log_model=True))


def part_name(variant: str, at: str | None) -> str:
    """``fitnet`` tapped at ``layer2`` is run ``fitnet.layer2``."""
    return f"{variant}.{at}" if at else variant


def run_student(p: Params, variant: str, seed: int, at: str | None = None, parts: bool = False) -> dict:
    """Train one student with the distillation method ``variant``; ``at``: tap only this layer (for the
    methods with ``layers``, in the question-2 study)."""
    method = distill.build(variant, p, **({"layers": [at]} if at else {}))
    name = part_name(variant, at)
    ctx = context(p, seed)
    resume_key = {}
    teacher = None
    if method.uses_teacher_model or method.builds_from_teacher:
        t, teacher = load_teacher(p, ctx)
        teacher = memory_format(teacher, p.teacher, ctx)
        resume_key["teacher_sha256"] = io.sha256(TEACHER)
    batches = train_batches(p, ctx, method, seed, resume_key)
    student = build_model(p.student, ctx)
    arch = None
    if method.builds_from_teacher:
        student = memory_format(method.init_student(student, teacher).to(ctx.device), p.student, ctx)
        arch = {"arch": t["arch"], "width": t["width"], "blocks": method.blocks(teacher)}
    example = ctx.normalize(ctx.splits["train"]["images"][:32].to(ctx.device))
    method.attach(student, teacher, example)
    method.to(ctx.device)
    files = run_files(name, seed, "parts" if parts else "students")
    about = "" if not parts else (f"Question 2: {variant}'s feature loss at `{at}` only. " if at else
                                  "Question 2: carved out of the teacher's blocks. " if method.builds_from_teacher else
                                  "Question 2: the carved shape, randomly initialised. ")
    return train_run(p, ctx, Run(f"{name}-{seed}", "student", p.student, seed, method, batches, student, files,
                                 {"variant": name}, resume_key, arch, log_model=not parts, about=about,
                                 method_name=variant))
