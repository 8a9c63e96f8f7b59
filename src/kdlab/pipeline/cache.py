"""``kdlab cache``: the teacher's logits for every view a student can draw (shared/DESIGN.md); students read
them through :func:`kdlab.pipeline.workspace.load_cache`.

data/teacher_logits/train.pt holds ``view_ids`` (N, K) int16 and ``logits`` (N, K, classes) fp16, with
the teacher checkpoint's sha256 and the view settings, so a cache built by another teacher or with other
views is refused instead of silently used.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from tqdm import tqdm

from kdlab.core import views
from kdlab.core.train import autocast
from kdlab.infra import io
from kdlab.pipeline.params import Params
from kdlab.pipeline.workspace import CACHE, CACHE_PARTIAL, TEACHER, context, load_teacher

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


def run_cache(p: Params) -> dict:
    ctx = context(p, p.cache.seed)
    _, teacher = load_teacher(p, ctx)
    train = ctx.splits["train"]
    table = views.view_table(len(train["labels"]), p.views.pad, p.views.flip, p.cache.views, p.cache.seed)
    stamp = {"teacher_sha256": io.sha256(TEACHER), "pad": p.views.pad, "flip": p.views.flip,
             "views": p.cache.views, "seed": p.cache.seed}
    fingerprint = json.dumps({**stamp, "batch_size": p.cache.batch_size, "data": ctx.meta["sha256"],
                              "precision": p.train.precision, "code": io.code_digest()}, sort_keys=True)
    logits = teacher_logits_for(teacher, train["images"], table, ctx.normalize, p.views.pad, p.cache.batch_size,
                                autocast(ctx.device, p.train.precision), CACHE_PARTIAL, fingerprint)
    io.save_torch({"view_ids": table, "logits": logits, **stamp}, CACHE / "train.pt")
    shutil.rmtree(CACHE_PARTIAL, ignore_errors=True)
    correct = (logits.float().argmax(-1) == train["labels"][:, None]).float().mean().item()
    print(f"cached {tuple(logits.shape)} teacher logits; teacher correct on {correct:.4f} of cached train views")
    return {"views_per_image": table.shape[1], "teacher_train_view_acc": correct}
