"""The one training path: a run is data (:class:`RunSpec`), and :func:`train` trains every teacher and student
of every study from one. What a study adds is only how it names its runs and where it keeps them (its spec
builders: :mod:`kdlab.pipeline.stages`, the named studies' designs,
:mod:`kdlab.analysis.q1_design`, :mod:`kdlab.analysis.q23_design`).

A run: a fresh model (``init``: ``random``; ``carved``, the teacher's residual blocks ``blocks`` with their
weights; ``pruned``, a pruned teacher's file; ``shape``, that file's shape freshly initialised) trained
``model.epochs`` epochs with the method ``method`` (the loss; ``options`` override its ``methods.<name>``
params) on the prepared data or a study's seeded subset of it, from the teacher's model and/or its logit cache
as the method reads them. It keeps its best-on-validation state, tests that once, and writes the model and
metrics files, its MLflow run, the weights at the end of each of ``snapshots`` epochs and, if asked, its
validation curve with its test predictions.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from pathlib import Path

import torch

from kdlab import distill
from kdlab.core import models, views
from kdlab.core.loader import TrainBatches
from kdlab.core.train import accuracy, fit, predict
from kdlab.infra import distributed, io, tracking
from kdlab.infra.schema import flatten
from kdlab.pipeline.params import Params, with_overrides
from kdlab.pipeline.spec import INITS, RunSpec, record as spec_record
from kdlab.pipeline.workspace import (
    CHECKPOINTS,
    Context,
    build_model,
    context,
    load_checked,
    memory_format,
    model_from_checkpoint,
    read_cache,
)

#: the prepared splits as the MLflow datasets every training run reads
DATASET_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}


def describe(p: Params, spec: RunSpec, arch: dict) -> str:
    """The MLflow run page's description of a training run: what was trained, how, and how it was chosen."""
    m = spec.model
    how = ("on the labels alone (cross-entropy)" if spec.method == "raw" else
           f"with `{spec.method}` (KD weight loss.alpha={p.loss.alpha}, temperature {p.loss.temperature}; a "
           f"method's own options are the `methods.*` params)")
    return (f"{spec.role.capitalize()} `{spec.name}` of stage `{os.environ.get('DVC_STAGE') or spec.role}`: "
            f"`{arch['arch']}` at width {arch['width']}, {m.epochs} epochs at lr {m.lr}, seed {spec.seed}, "
            f"trained {how} on {p.data.name}. {spec.about}The kept checkpoint is the best epoch on the validation "
            f"split (tag `best_epoch`); `test_acc` is that checkpoint's, measured once. Per-epoch curves: "
            f"`val_acc`, `loss`, `loss/*`; per step: `train_loss`.")


def fingerprint(p: Params, ctx: Context, spec: RunSpec, resume_key: dict) -> str:
    """What a checkpoint must match to be resumed: params, run, data, tags, input hashes and the code."""
    blob = json.dumps({"params": {**flatten(p), **spec.extra}, "run": spec.name, "data": ctx.meta["sha256"],
                       "code": io.code_digest(), **spec.tags, **resume_key}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _teacher(spec: RunSpec, ctx: Context, resume_key: dict) -> tuple[dict, torch.nn.Module]:
    """(file, model) of the teacher, refused unless it was trained as ``spec.teacher_model`` on the prepared data
    in use."""
    if spec.teacher is None:
        raise io.StageError(f"run {spec.name}: its method or init needs the teacher, and the run names none")
    ckpt, model = load_checked(spec.teacher, spec.teacher_model, ctx)
    resume_key["teacher_sha256"] = io.sha256(spec.teacher.path)
    # its own memory format where its params name one (a student carved from it, and re-initialised, inherits
    # the format, and a re-initialisation draws in memory order), else the student's
    fmt = spec.teacher_model if hasattr(spec.teacher_model, "channels_last") else spec.model
    return ckpt, memory_format(model, fmt, ctx)


def _initial_model(spec: RunSpec, method, ctx: Context, t: dict | None, teacher, resume_key: dict):
    """(the model to train, its architecture as the model file records it, or None for ``spec.model``'s)."""
    from kdlab.core.surgery import keep_blocks, reinit

    if spec.init == "random":
        return build_model(spec.model, ctx), None
    if spec.init == "carved":
        model = keep_blocks(teacher, spec.blocks, "blocks").train()
        return memory_format(model.to(ctx.device), spec.model, ctx), {"arch": t["arch"], "width": t["width"],
                                                                      "blocks": spec.blocks}
    if spec.init not in INITS or spec.pruned is None:
        raise io.StageError(f"run {spec.name}: init {spec.init!r} (allowed: {', '.join(INITS)}; pruned and shape "
                            f"need the pruned model's file)")
    ckpt = io.load_torch(spec.pruned.path, spec.pruned.rebuild)
    model = model_from_checkpoint(ckpt, ctx)
    if spec.init == "shape":
        reinit(model)  # torch's generator, seeded with this run's seed by context()
    resume_key["pruned_sha256"] = io.sha256(spec.pruned.path)
    model = memory_format(model.to(ctx.device), spec.model, ctx).train()
    return model, {k: ckpt[k] for k in ("arch", "width", "blocks", "pruning")}


def _batches(p: Params, spec: RunSpec, ctx: Context, method, resume_key: dict) -> TrainBatches:
    """The training batches: any view (the teachers, and methods whose ``views`` is "all"), or the cached views
    with (or without) the teacher's logits."""
    train = ctx.splits["train"]
    n, logits = len(train["labels"]), None
    if spec.all_views or method.views == "all":
        table = views.view_table(n, p.views.pad, p.views.flip, "all", 0)
    elif method.uses_teacher_logits:
        if spec.cache is None:
            raise io.StageError(f"run {spec.name}: {spec.method} reads the teacher's logits; the run names no cache")
        c = read_cache(p, spec.cache.path, spec.cache.rebuild, spec.teacher.path if spec.teacher else None,
                       spec.subset)
        table, logits = c["view_ids"], c["logits"]
        resume_key["cache_sha256"] = io.sha256(spec.cache.path)
        if getattr(method, "reads_clean_correct", False) and c.get("clean_correct") is not None:
            method.clean_correct = c["clean_correct"].to(ctx.device)
    else:  # the same views the cached-KD students draw from, without reading the cache
        table = views.view_table(n, p.views.pad, p.views.flip, p.cache.views, p.cache.seed)
    return TrainBatches(train["images"], train["labels"], ctx.normalize, p.train.batch_size, p.views.pad, table,
                        seed=spec.seed, teacher_logits=logits, rank=distributed.rank(), world=distributed.world())


def _model_file(arch: dict, ctx: Context, state: dict, seed: int, **extra) -> dict:
    return {**arch, "in_channels": ctx.meta["channels"], "classes": ctx.meta["classes"], "state_dict": state,
            "seed": seed, **extra}


def _snapshotter(spec: RunSpec, ctx: Context, model: torch.nn.Module):
    """``on_epoch_start(epoch)`` for :func:`kdlab.core.train.fit`: at the start of epoch k + 1 the weights are the
    end of epoch k (epoch 0: before any step), trained or resumed alike."""
    wanted = set(spec.snapshots)

    def save(epoch: int) -> None:
        if epoch - 1 not in wanted or not distributed.is_main():
            return
        state, path = copy.deepcopy(model.state_dict()), spec.snapshot_dir / f"e{epoch - 1}.pt"
        if spec.snapshot_as_model:
            io.save_torch(_model_file({"arch": spec.model.arch, "width": spec.model.width}, ctx, state, spec.seed,
                                      data_sha256=ctx.meta["sha256"], epoch=epoch - 1), path)
        else:
            io.save_torch({"epoch": epoch - 1, "state_dict": state}, path)
    return save if wanted else None


def train(p: Params, spec: RunSpec) -> dict:
    """Train the run ``spec``, keep its best-on-validation state, test it and write its files and MLflow run;
    returns the metrics (empty on ranks other than 0)."""
    p = with_overrides(p, spec.overrides)
    method = distill.build(spec.method, p, **spec.options)
    ctx = context(p, spec.seed, spec.subset)
    resume_key: dict = {}
    t = teacher = None
    if method.uses_teacher_model or spec.init == "carved":
        t, teacher = _teacher(spec, ctx, resume_key)
    model, arch = _initial_model(spec, method, ctx, t, teacher, resume_key)
    batches = _batches(p, spec, ctx, method, resume_key)
    train_images, train_labels = ctx.splits["train"]["images"], ctx.splits["train"]["labels"]
    method.attach(model, teacher if method.uses_teacher_model else None,
                  ctx.normalize(train_images[:spec.calibration_images].to(ctx.device)),
                  train_labels[:spec.calibration_images].to(ctx.device))
    method.to(ctx.device)
    return _fit_and_write(p, spec, ctx, method, model, batches, arch, resume_key)


def _fit_and_write(p: Params, spec: RunSpec, ctx: Context, method, model, batches, arch: dict | None,
                   resume_key: dict) -> dict:
    m = spec.model
    record_arch = arch or {"arch": m.arch, "width": m.width}
    model_path, metrics_path = spec.files
    checkpoint = CHECKPOINTS / f"{spec.name}.pt"
    val = (ctx.splits["val"]["images"], ctx.splits["val"]["labels"])
    test = (ctx.splits["test"]["images"], ctx.splits["test"]["labels"])
    start = time.perf_counter()
    params = {**flatten(p), **spec.extra}
    with tracking.run(spec.role, spec.name, params, {**spec.tags, "seed": spec.seed},
                      describe(p, spec, record_arch)) as logged:
        logged.log_dataset(ctx.meta, DATASET_CONTEXTS)
        steps_per_epoch = len(batches)

        def on_epoch(row):
            logged.log({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])

        def on_steps(epoch, losses):  # x: the global step, as in every training-loss plot
            first = (epoch - 1) * steps_per_epoch + 1
            logged.log_steps({"train_loss": [(first + i, v) for i, v in enumerate(losses)]})

        res = fit(model, method, batches, val, m.epochs, m.lr, p.train, spec.name, on_epoch, checkpoint,
                  fingerprint(p, ctx, spec, resume_key), on_steps, _snapshotter(spec, ctx, model))
        if not distributed.is_main():  # rank 0 alone tests, writes and logs
            return {}
        bs, prec = p.train.eval_batch_size, p.train.precision
        metrics = {"val_acc": res.best_val_acc, "test_acc": None, "best_epoch": res.best_epoch,
                   "val_acc_last": res.last_val_acc, "test_acc_last": None, "epochs": m.epochs}
        if spec.test:
            model.load_state_dict(res.last_state)
            metrics["test_acc_last"] = accuracy(predict(model, *test, ctx.normalize, bs, prec), test[1])
            model.load_state_dict(res.best_state)
            test_out = predict(model, *test, ctx.normalize, bs, prec)
            metrics["test_acc"] = accuracy(test_out, test[1])
        else:  # a pilot's run: no test figure at all, not even an empty one
            del metrics["test_acc"], metrics["test_acc_last"]
        metrics.update({
            "params": models.count_params(model), "train_seconds": res.train_seconds,
            "wall_seconds": time.perf_counter() - start,
        })
        if res.compiled and res.first_step_seconds is not None:  # torch.compile's cost, apart from training
            metrics["compile_seconds"] = res.first_step_seconds
        io.save_torch(_model_file(record_arch, ctx, res.best_state, spec.seed, history=res.history, metrics=metrics,
                                  data_sha256=ctx.meta["sha256"], **spec.tags), model_path)
        io.save_json({**metrics, "spec": spec_record(spec)}, metrics_path)  # the numbers and the run they measure
        if spec.curve is not None:  # the validation curve (where it plateaus) and, if asked, the test predictions
            out = {**spec.record, "val_curve": [row["val_acc"] for row in res.history]}
            if spec.predictions and spec.test:
                out.update(test_acc=metrics["test_acc"], val_acc=res.best_val_acc, pred=io.digits(test_out.argmax(1)))
            io.save_json(out, spec.curve)
        # "val_acc" is the per-epoch curve in MLflow; the chosen epoch's value goes in as best_val_acc. What
        # describes the run rather than measures it is a tag; the metrics file's hash lets a later study that
        # reuses this output (a DVC experiment) link this run in (tracking.Run.link_reused)
        metadata = ("best_epoch", "epochs", "params")
        logged.log({("best_val_acc" if k == "val_acc" else k): v for k, v in metrics.items() if k not in metadata})
        logged.set_tags({"best_epoch": res.best_epoch, "model_params": metrics["params"],
                         "kdlab.metrics_sha256": io.sha256(metrics_path)})
        logged.log_text(Path(metrics_path).read_text(), "metrics.json")
        if spec.log_model and arch is None:
            _log_model(p, ctx, spec, res.best_state, logged)
    # only once the run is logged and closed: a tracking failure above leaves the checkpoint, and a rerun
    # resumes after the last epoch instead of training again
    checkpoint.unlink(missing_ok=True)
    test_words = f" test {metrics['test_acc']:.4f}" if spec.test else " (not tested)"
    print(f"{spec.name}: val {metrics['val_acc']:.4f} (epoch {res.best_epoch}){test_words} "
          f"in {metrics['wall_seconds']:.0f}s")
    return metrics


def _log_model(p: Params, ctx: Context, spec: RunSpec, state: dict, logged) -> None:
    """The kept checkpoint as an MLflow model: rebuilt from its architecture (so no training hooks are traced),
    on the CPU, with 8 normalized validation images as the signature's example."""
    m = spec.model
    with torch.random.fork_rng(devices=[]):  # building a model draws initial weights: leave the stream as it was
        clean = models.build(m.arch, ctx.meta["channels"], ctx.meta["classes"], m.width)
    clean.load_state_dict({k: v.float().cpu() for k, v in state.items()})
    example = ctx.normalize(ctx.splits["val"]["images"][:8].to(ctx.device)).float().cpu().contiguous()
    mean, std = ctx.meta["mean"], ctx.meta["std"]
    about = (f"kdlab {spec.name} ({m.arch} x{m.width}, {p.data.name}): takes images scaled to [0, 1], "
             f"then normalized by mean {mean} and std {std}")
    logged.log_model(clean.eval(), example, about)
