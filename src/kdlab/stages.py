"""The training stages, ``kdlab teacher`` and ``kdlab student --variant V --seed S`` (and ``kdlab part``, a
student of the question-2 study), and :func:`train_run`, which trains and writes one run for every training
stage (the question-3 students included)."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kdlab import distill, distributed, io, models, tracking, views
from kdlab.loader import TrainBatches
from kdlab.params import ModelParams, Params
from kdlab.schema import flatten
from kdlab.train import accuracy, fit, predict
from kdlab.workspace import (CHECKPOINTS, METRICS, TEACHER, Context, build_model, context, load_teacher, memory_format,
                             run_files, train_batches)


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
    #: how :func:`kdlab.workspace.load_model` rebuilds the model (default: ``spec``'s arch and width)
    arch: dict | None = None


def fingerprint(p: Params, ctx: Context, run: Run) -> str:
    """What a checkpoint must match to be resumed: params, run, data, tags, input hashes and the code."""
    blob = json.dumps({"params": flatten(p), "run": run.name, "data": ctx.meta["sha256"], "code": io.code_digest(),
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
    with tracking.run(run.role, run.name, flatten(p), {**run.tags, "seed": run.seed}) as logged:
        def on_epoch(row):
            logged.log({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])

        res = fit(model, run.method, run.batches, val, spec.epochs, spec.lr, p.train, run.name, on_epoch, checkpoint,
                  fingerprint(p, ctx, run))
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
        # "val_acc" is the per-epoch curve in MLflow; the chosen epoch's value goes in as best_val_acc
        logged.log({("best_val_acc" if k == "val_acc" else k): v for k, v in metrics.items()})
        logged.log_artifact(metrics_path)
    # only once the run is logged and closed: a tracking failure above leaves the checkpoint, and a rerun
    # resumes after the last epoch instead of training again
    checkpoint.unlink(missing_ok=True)
    print(f"{run.name}: val {metrics['val_acc']:.4f} (epoch {res.best_epoch}) test {test_acc:.4f} "
          f"in {metrics['wall_seconds']:.0f}s")
    return metrics


def run_teacher(p: Params) -> dict:
    ctx = context(p, p.teacher.seed)
    train = ctx.splits["train"]
    table = views.view_table(len(train["labels"]), p.views.pad, p.views.flip, "all", 0)
    batches = TrainBatches(train["images"], train["labels"], ctx.normalize, p.train.batch_size, p.views.pad,
                           table, seed=p.teacher.seed, rank=distributed.rank(), world=distributed.world())
    return train_run(p, ctx, Run("teacher", "teacher", p.teacher, p.teacher.seed, distill.build("raw", p), batches,
                                 build_model(p.teacher, ctx), (TEACHER, METRICS / "teacher.json")))


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
    return train_run(p, ctx, Run(f"{name}-{seed}", "student", p.student, seed, method, batches, student, files,
                                 {"variant": name}, resume_key, arch))
