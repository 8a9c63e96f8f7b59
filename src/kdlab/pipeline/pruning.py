"""Question 3, what can be pruned while distilling: ``kdlab prune_teacher`` prunes the teacher to each target
size by each criterion (:mod:`kdlab.core.channels`); ``kdlab train pruned/<run>`` trains one student from such a model
(:func:`kdlab.pipeline.stages.pruned_spec`); ``kdlab pruning`` gathers the study (:mod:`kdlab.analysis.pruning`).

Target sizes (``prune.sizes``) are multiples of the default student's parameter count (``student.arch`` x
``student.width``). At every size, the teacher pruned by ``prune.criterion`` is trained four ways over
``study.seeds``: its pruned weights with KD (``prune...kd``) or on labels (``prune...raw``), and the same shape
freshly initialised with KD or on labels (``shape...``). At the first size, the teacher pruned by each criterion
of ``prune.compare`` is trained with KD too, so every criterion can be set against the main one and against
``random``. Students train exactly like the main study's (student.epochs, student.lr, the cached views).
"""
from __future__ import annotations

from dataclasses import replace

from kdlab import distill
from kdlab.core import channels
from kdlab.core.models import count_params
from kdlab.core.surgery import keep_blocks
from kdlab.core.train import accuracy, kd_finetuner, predict
from kdlab.infra import io, tracking
from kdlab.infra.schema import flatten
from kdlab.pipeline.cache import cached_batches
from kdlab.pipeline.params import LossParams, Params
from kdlab.pipeline.stages import model_name, pruned_models
from kdlab.pipeline.workspace import (
    CACHE_FILE,
    PROFILE_PLOT,
    PRUNE_JSON,
    PRUNED_TEACHERS,
    TEACHER_FILE,
    build_model,
    context,
    load_teacher,
)

# ---------------------------------------------------------------- kdlab prune_teacher

def _finetuner(p: Params, ctx, seed: int):
    """The default study's fine-tuner: ``prune.finetune_steps`` KD steps from the cached logits at student.lr, with
    ``prune.finetune_alpha`` and ``finetune_temperature``, not ``loss.*``: the pruned teachers do not depend on the
    students' loss."""
    loss = LossParams(alpha=p.prune.finetune_alpha, temperature=p.prune.finetune_temperature)
    kd = distill.build("kd", replace(p, loss=loss))
    batches = cached_batches(p, ctx, CACHE_FILE.path, CACHE_FILE.rebuild, TEACHER_FILE.path, seed)
    return kd_finetuner(kd, batches, p.prune.finetune_steps, p.student.lr, p.train, ctx.device,
                        ctx.precision)


def run_prune_teacher(p: Params) -> dict:
    ctx = context(p, p.teacher.seed)
    t, teacher = load_teacher(p, ctx)
    base = keep_blocks(teacher, p.prune.keep, "prune.keep") if p.prune.keep else teacher
    train, val = ctx.splits["train"], ctx.splits["val"]
    n = p.prune.calibration_images
    calib = (ctx.normalize(train["images"][:n].to(ctx.device)), train["labels"][:n].to(ctx.device))
    unit = count_params(build_model(p.student, ctx))
    summary = {"student_params": unit, "teacher_params": count_params(teacher), "models": {}}
    between = _finetuner(p, ctx, p.teacher.seed) if p.prune.steps > 1 else None
    rows = []
    with tracking.run("prune_teacher", "prune_teacher", flatten(p)) as run:
        for criterion, size in pruned_models(p):
            name = model_name(criterion, size)
            target = round(size * unit)
            model, histories = channels.prune_iteratively(base, criterion, target, calib, p.prune.steps, between,
                                                          p.prune.max_ratio, seed=p.teacher.seed)
            val_acc = accuracy(predict(model, val["images"], val["labels"], ctx.normalize, p.train.eval_batch_size,
                                       p.train.precision), val["labels"])
            kept = channels.channel_profile(teacher, model)
            # "stages" (a ResNet layer's share of channels kept) and "channels": the keys of metrics/prune.json
            entry = {"criterion": criterion, "size": size, "target_params": target, "params": count_params(model),
                     "val_acc_pruned": val_acc, "stages": channels.layer_profile(kept, teacher), "channels": kept}
            io.save_torch({"arch": t["arch"], "width": t["width"], "in_channels": t["in_channels"],
                           "classes": t["classes"], "blocks": p.prune.keep or None, "pruning": histories,
                           "state_dict": model.state_dict(), **entry}, PRUNED_TEACHERS / f"{name}.pt")
            summary["models"][name] = entry
            rows += [{"model": name, "stage": st, "kept": frac} for st, frac in entry["stages"].items()]
            run.log({f"prune/{name}/params": entry["params"], f"prune/{name}/val_acc_pruned": val_acc})
            print(f"{name}: {entry['params']:,} parameters (target {target:,}), val accuracy before training "
                  f"{val_acc:.4f}; channels kept: " + ", ".join(f"{k} {v:.0%}" for k, v in entry["stages"].items()))
        io.save_json(summary, PRUNE_JSON)
        io.save_json(rows, PROFILE_PLOT)
        run.log_artifact(PRUNE_JSON)
    return summary
