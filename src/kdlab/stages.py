"""The training stages: ``kdlab teacher`` and ``kdlab student --variant V --seed S``."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kdlab import data, distill, distributed, io, models, runtime, tracking, views
from kdlab.loader import Normalize, TrainBatches
from kdlab.params import Params, flatten
from kdlab.train import accuracy, fit, predict

TEACHER = Path("models/teacher.pt")
#: per-epoch training state of interrupted runs; deleted once a run's outputs are written
CHECKPOINTS = Path("checkpoints")
STUDENTS = Path("models/students")
#: the question-2 study's students (feature loss at one stage, students carved from the teacher)
PARTS = Path("models/parts")
METRICS = Path("metrics")


@dataclass
class Context:
    device: torch.device
    meta: dict
    splits: dict
    normalize: Normalize
    #: train.precision resolved for this device: "bf16" or "fp32"
    precision: str = "fp32"


def context(p: Params, seed: int) -> Context:
    dev = runtime.setup(p.train, seed)
    meta, splits = data.load_prepared(p.data)
    return Context(dev, meta, splits, Normalize(meta["mean"], meta["std"], dev, channels_last=dev.type == "cuda"),
                   runtime.precision(p.train.precision, dev))


def memory_format(model: torch.nn.Module, spec, ctx: Context) -> torch.nn.Module:
    """``spec.channels_last`` applied; never for fp32 steps on the CPU, where oneDNN's fp32 convolution backward
    (torch 2.14.1) corrupts the heap on channels_last tensors (an abort, "corrupted size vs. prev_size", seen on
    an AVX2 AMD EPYC; the CPUs where precision auto is fp32). bf16 steps, as on the AMX CPU, keep it."""
    channels_last = ctx.device.type == "cuda" if spec.channels_last == "auto" else spec.channels_last
    channels_last = channels_last and not (ctx.device.type == "cpu" and ctx.precision == "fp32")
    # convolutions follow the weights' memory format, so the inputs can stay as they are
    return model.to(memory_format=torch.channels_last) if channels_last else model


def build_model(spec, ctx: Context) -> torch.nn.Module:
    model = models.build(spec.arch, ctx.meta["channels"], ctx.meta["classes"], spec.width).to(ctx.device)
    return memory_format(model, spec, ctx)


def load_model(path: Path, ctx: Context, rebuild: str) -> torch.nn.Module:
    """A saved model; one carved from the teacher (``blocks`` in the file) is carved again and one pruned from
    it (``pruning``: torch-pruning's history) is pruned again to the same shape, then its weights are loaded."""
    return model_from_checkpoint(io.load_torch(path, rebuild), ctx)


def load_teacher(p: Params, ctx: Context) -> tuple[dict, torch.nn.Module]:
    """(checkpoint, model) of models/teacher.pt, refused unless it was trained as params.teacher asks, on the
    prepared data in use."""
    ckpt = io.load_torch(TEACHER, "dvc repro teacher")
    check_trained(ckpt, TEACHER, p.teacher, ctx, "dvc repro teacher")
    return ckpt, model_from_checkpoint(ckpt, ctx)


def check_trained(ckpt: dict, path: Path, spec, ctx: Context, rebuild: str) -> None:
    """A saved model must be the architecture ``spec`` names, trained on the prepared data in use."""
    got = {"arch": ckpt.get("arch"), "width": ckpt.get("width"), "data": ckpt.get("data_sha256")}
    want = {"arch": spec.arch, "width": spec.width, "data": ctx.meta["sha256"]}
    if got != want:
        diff = ", ".join(f"{k} {got[k]} (now {want[k]})" for k in want if got[k] != want[k] and k != "data")
        if got["data"] != want["data"]:
            diff += (", " if diff else "") + "other prepared data"
        raise io.StageError(f"{path} was trained with {diff}; rebuild it with `{rebuild}`")


def model_from_checkpoint(ckpt: dict, ctx: Context) -> torch.nn.Module:
    model = models.build(ckpt["arch"], ckpt["in_channels"], ckpt["classes"], ckpt["width"])
    if ckpt.get("blocks"):
        from kdlab.surgery import keep_blocks

        model = keep_blocks(model, ckpt["blocks"])
    if ckpt.get("pruning"):
        from kdlab.prune import replay

        size = ctx.meta["image_size"]
        replay(model, ckpt["pruning"], torch.zeros(2, ckpt["in_channels"], size, size))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(ctx.device).eval()


def _fingerprint(p: Params, ctx: Context, run_name: str, extra: dict) -> str:
    """What a checkpoint must match to be resumed: params, run, data, inputs in ``extra`` and the code."""
    blob = json.dumps({"params": flatten(p), "run": run_name, "data": ctx.meta["sha256"], "code": io.code_digest(),
                       **extra},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _train_and_save(p: Params, ctx: Context, role: str, spec, seed: int, method, batches: TrainBatches,
                    model_path: Path, metrics_path: Path, run_name: str, extra: dict,
                    resume_key: dict | None = None, model: torch.nn.Module | None = None,
                    arch: dict | None = None) -> dict:
    """Train ``model`` (default: a fresh ``spec`` model) and write it with its metrics. ``arch``: how
    :func:`load_model` rebuilds it (default: ``spec``'s arch and width)."""
    model = build_model(spec, ctx) if model is None else model
    arch = arch or {"arch": spec.arch, "width": spec.width}
    checkpoint = CHECKPOINTS / f"{run_name}.pt"
    val = (ctx.splits["val"]["images"], ctx.splits["val"]["labels"])
    test = (ctx.splits["test"]["images"], ctx.splits["test"]["labels"])
    start = time.perf_counter()
    with tracking.run(role, run_name, flatten(p), {**extra, "seed": seed}) as run:
        def on_epoch(row):
            run.log({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])

        res = fit(model, method, batches, val, spec.epochs, spec.lr, p.train, run_name, on_epoch, checkpoint,
                  _fingerprint(p, ctx, run_name, {**extra, **(resume_key or {})}))
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
            "classes": ctx.meta["classes"], "state_dict": res.best_state, "seed": seed,
            "history": res.history, "metrics": metrics, "data_sha256": ctx.meta["sha256"], **extra,
        }, model_path)
        io.save_json(metrics, metrics_path)
        # "val_acc" is the per-epoch curve in MLflow; the chosen epoch's value goes in as best_val_acc
        run.log({("best_val_acc" if k == "val_acc" else k): v for k, v in metrics.items()})
        run.log_artifact(metrics_path)
    # only once the run is logged and closed: a tracking failure above leaves the checkpoint, and a rerun
    # resumes after the last epoch instead of training again
    checkpoint.unlink(missing_ok=True)
    print(f"{run_name}: val {metrics['val_acc']:.4f} (epoch {res.best_epoch}) test {test_acc:.4f} "
          f"in {metrics['wall_seconds']:.0f}s")
    return metrics


def run_teacher(p: Params) -> dict:
    ctx = context(p, p.teacher.seed)
    train = ctx.splits["train"]
    table = views.view_table(len(train["labels"]), p.views.pad, p.views.flip, "all", 0)
    batches = TrainBatches(train["images"], train["labels"], ctx.normalize, p.train.batch_size, p.views.pad,
                           table, seed=p.teacher.seed, rank=distributed.rank(), world=distributed.world())
    return _train_and_save(p, ctx, "teacher", p.teacher, p.teacher.seed, distill.build("raw", p), batches,
                           TEACHER, METRICS / "teacher.json", "teacher", {})


def student_paths(name: str, seed: int, parts: bool = False) -> tuple[Path, Path]:
    """Model and metrics files of a student run; ``parts``: a run of the question-2 study."""
    models_dir, metrics_dir = (PARTS, METRICS / "parts") if parts else (STUDENTS, METRICS / "students")
    return models_dir / f"{name}-{seed}.pt", metrics_dir / f"{name}-{seed}.json"


def part_name(variant: str, at: str | None) -> str:
    """``fitnet`` tapped at ``layer2`` is run ``fitnet.layer2``."""
    return f"{variant}.{at}" if at else variant


def run_student(p: Params, variant: str, seed: int, at: str | None = None, parts: bool = False) -> dict:
    """Train one student with the distillation method ``variant``; ``at``: tap only this stage (for the
    methods with ``stages``, in the question-2 study)."""
    method = distill.build(variant, p, **({"stages": [at]} if at else {}))
    name = part_name(variant, at)
    ctx = context(p, seed)
    resume_key = {}
    teacher = None
    if method.uses_teacher_model or method.builds_from_teacher:
        t, teacher = load_teacher(p, ctx)
        teacher = memory_format(teacher, p.teacher, ctx)
        resume_key["teacher_sha256"] = io.sha256(TEACHER)
    batches = student_batches(p, ctx, method, seed, resume_key)
    student = build_model(p.student, ctx)
    arch = None
    if method.builds_from_teacher:
        student = memory_format(method.init_student(student, teacher).to(ctx.device), p.student, ctx)
        arch = {"arch": t["arch"], "width": t["width"], "blocks": method.blocks(teacher)}
    example = ctx.normalize(ctx.splits["train"]["images"][:32].to(ctx.device))
    method.attach(student, teacher, example)
    method.to(ctx.device)
    model_path, metrics_path = student_paths(name, seed, parts)
    return _train_and_save(p, ctx, "student", p.student, seed, method, batches, model_path, metrics_path,
                           f"{name}-{seed}", {"variant": name}, resume_key, model=student, arch=arch)


def student_batches(p: Params, ctx: Context, method, seed: int, resume_key: dict) -> TrainBatches:
    """The training batches ``method`` reads: any view ("all"), or the cached views with (or without) their
    teacher logits. The cache's hash goes into ``resume_key``."""
    from kdlab import cache

    train = ctx.splits["train"]
    teacher_logits = None
    if method.views == "all":  # fresh random views: any of the V views at every epoch
        table = views.view_table(len(train["labels"]), p.views.pad, p.views.flip, "all", 0)
    elif method.uses_teacher_logits:
        table, teacher_logits = cache.load_train(p)
        resume_key["cache_sha256"] = io.sha256(cache.CACHE / "train.pt")
    else:  # the same views the cached-KD students draw from, without reading the cache
        table = views.view_table(len(train["labels"]), p.views.pad, p.views.flip, p.cache.views, p.cache.seed)
    return TrainBatches(train["images"], train["labels"], ctx.normalize, p.train.batch_size, p.views.pad,
                        table, seed=seed, teacher_logits=teacher_logits, rank=distributed.rank(),
                        world=distributed.world())
