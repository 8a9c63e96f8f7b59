"""The teacher's logits for every view a student can draw (shared/DESIGN.md): one writer (:func:`write_cache`,
resumable) and one reader (:func:`kdlab.pipeline.workspace.read_cache`) for every study. ``kdlab cache`` is the
default study's (data/teacher_logits/train.pt), :func:`run_study_cache` a named study's, which also measures the
teacher.

A cache holds ``view_ids`` (N, K) int16 and ``logits`` (N, K, classes) fp16, with the teacher file's sha256, the
view settings and (a named study's) the subset's size, so a cache built by another teacher, with other views or
on another subset is refused instead of silently used; a named study's also holds ``clean_correct``, whether
the teacher is right on each clean training image.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from tqdm import tqdm

from kdlab.core import views
from kdlab.core.loader import TrainBatches
from kdlab.core.train import accuracy, autocast, predict
from kdlab.infra import io
from kdlab.pipeline.params import Params
from kdlab.pipeline.workspace import (
    CACHE,
    CACHE_PARTIAL,
    TEACHER,
    Context,
    Subset,
    cache_stamp,
    context,
    load_teacher,
    model_from_checkpoint,
    read_cache,
)

REBUILD = "dvc repro cache"


@torch.no_grad()
def teacher_logits_for(teacher, images, view_table, normalize, pad: int, batch_size: int, autocast,
                       partial: Path | None = None, fingerprint: str = "", chunk_batches: int = 50) -> torch.Tensor:
    """Logits (N, K, classes) fp16 of ``teacher`` on view ``view_table[i, k]`` of image i.

    With ``partial``, every ``chunk_batches`` batches are saved there as a chunk (atomically), and chunks
    with the same ``fingerprint`` found there are reused: an interrupted cache stage resumes.
    """
    n, k = view_table.shape
    device = normalize.mean.device
    flat = torch.arange(n * k)
    chunk = batch_size * chunk_batches
    parts = []
    bar = tqdm(total=n * k, desc="cache teacher logits", unit="view", unit_scale=True, dynamic_ncols=True,
               mininterval=2.0)
    for c, start in enumerate(range(0, n * k, chunk)):
        path = None if partial is None else partial / f"chunk_{c:05d}.pt"
        if path is not None and path.exists():
            saved = io.load_torch(path, f"rm -r {partial} && {REBUILD}")
            if saved.get("fingerprint") == fingerprint:
                parts.append(saved["logits"])
                bar.update(len(saved["logits"]))
                continue
        out = []
        for b in range(start, min(start + chunk, n * k), batch_size):
            pairs = flat[b:b + batch_size]
            img_idx, slot = pairs // k, pairs % k
            x = views.render(images[img_idx].to(device), view_table[img_idx, slot].long().to(device), pad)
            with autocast:
                out.append(teacher(normalize(x)).float().cpu().half())
            bar.update(len(pairs))
        parts.append(torch.cat(out))
        if path is not None:
            io.save_torch({"fingerprint": fingerprint, "logits": parts[-1]}, path)
    bar.close()
    return torch.cat(parts).view(n, k, -1)


def write_cache(p: Params, ctx: Context, teacher, teacher_path: Path, out: Path, partial: Path,
                subset: Subset | None = None, extra: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``teacher``'s logits on the cached views of ``ctx``'s training split into ``out``, stamped with
    ``teacher_path``'s sha256 and :func:`kdlab.pipeline.workspace.cache_stamp` (``extra``: more tensors to keep with
    them); chunks go to ``partial`` on the way, so an interrupted stage resumes. Returns (view_ids, logits)."""
    train = ctx.splits["train"]
    table = views.view_table(len(train["labels"]), p.views.pad, p.views.flip, p.cache.views, p.cache.seed)
    head = {"teacher_sha256": io.sha256(teacher_path), **cache_stamp(p, subset)}
    fingerprint = json.dumps({**head, "batch_size": p.cache.batch_size, "data": ctx.meta["sha256"],
                              "precision": p.train.precision, "code": io.code_digest()}, sort_keys=True)
    logits = teacher_logits_for(teacher, train["images"], table, ctx.normalize, p.views.pad, p.cache.batch_size,
                                autocast(ctx.device, p.train.precision), partial, fingerprint)
    io.save_torch({"view_ids": table, "logits": logits, **(extra or {}), **head}, out)
    shutil.rmtree(partial, ignore_errors=True)
    return table, logits


def cached_batches(p: Params, ctx: Context, path: Path, rebuild: str, teacher: Path, seed: int,
                   subset: Subset | None = None) -> TrainBatches:
    """Batches of the cached views with the teacher's logits, as a KD student reads them (one process): what
    iterative pruning fine-tunes on between steps."""
    c = read_cache(p, path, rebuild, teacher, subset)
    train = ctx.splits["train"]
    return TrainBatches(train["images"], train["labels"], ctx.normalize, p.train.batch_size, p.views.pad,
                        c["view_ids"], seed=seed, teacher_logits=c["logits"])


def run_cache(p: Params) -> dict:
    ctx = context(p, p.cache.seed)
    _, teacher = load_teacher(p, ctx)
    table, logits = write_cache(p, ctx, teacher, TEACHER, CACHE / "train.pt", CACHE_PARTIAL)
    correct = (logits.float().argmax(-1) == ctx.splits["train"]["labels"][:, None]).float().mean().item()
    print(f"cached {tuple(logits.shape)} teacher logits; teacher correct on {correct:.4f} of cached train views")
    return {"views_per_image": table.shape[1], "teacher_train_view_acc": correct}


def run_study_cache(p: Params, subset: Subset, name: str, teacher_path: Path, rebuild: str, out: Path,
                    metrics_file: Path, tests: Path) -> dict:
    """A named study's cache of the teacher file ``teacher_path`` (called ``name``) on its subset into ``out``,
    with the teacher's accuracies and wrong fractions (``metrics_file``) and its test predictions (``tests``)."""
    ctx = context(p, p.cache.seed, subset)
    teacher = model_from_checkpoint(io.load_torch(teacher_path, rebuild), ctx)
    train = ctx.splits["train"]
    bs, prec = p.train.eval_batch_size, p.train.precision
    clean = predict(teacher, train["images"], train["labels"], ctx.normalize, bs, prec)
    labels = train["labels"]
    clean_right = clean.argmax(1) == labels
    _, logits = write_cache(p, ctx, teacher, teacher_path, out, out.with_name(out.stem + ".partial"), subset,
                            {"clean_correct": clean_right})
    val = predict(teacher, ctx.splits["val"]["images"], ctx.splits["val"]["labels"], ctx.normalize, bs, prec)
    test_images, test_labels = ctx.splits["test"]["images"], ctx.splits["test"]["labels"]
    test = predict(teacher, test_images, test_labels, ctx.normalize, bs, prec)
    view_right = logits.float().argmax(-1) == labels[:, None]
    metrics = {
        "teacher": name, "val_acc": accuracy(val, ctx.splits["val"]["labels"]), "test_acc": accuracy(test, test_labels),
        "train_view_acc": view_right.float().mean().item(), "train_clean_acc": clean_right.float().mean().item(),
        # the fractions the KD-where-right methods act on
        "train_views_wrong": 1 - view_right.float().mean().item(),
        "train_images_wrong": 1 - clean_right.float().mean().item(),
        "train_images_any_view_wrong": (~view_right).any(1).float().mean().item(),
        "train_views_wrong_clean_right": (~view_right & clean_right[:, None]).float().mean().item(),
    }
    io.save_json(metrics, metrics_file)
    probs = test.softmax(1)
    io.save_json({"teacher": name, "test_acc": metrics["test_acc"], "pred": io.digits(probs.argmax(1)),
                  "labels": io.digits(test_labels),
                  "confidence": [round(v, 4) for v in probs.max(1).values.tolist()]}, tests)
    print(f"cache {name}: teacher val {metrics['val_acc']:.4f} test {metrics['test_acc']:.4f}; wrong on "
          f"{metrics['train_views_wrong']:.4f} of cached training views, {metrics['train_images_wrong']:.4f} of "
          f"clean training images")
    return metrics
