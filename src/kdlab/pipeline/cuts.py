"""Pruned teachers a named study's students start from (``kdlab prune --study FILE``; the study's ``prune``
section, :class:`Prune`), and why a pruned teacher starts at chance: every size of ``prune.sizes`` by the
iterative route (the trade-off curve), every criterion one-shot at ``prune.criteria_size``, each recalibrated
(BatchNorm statistics of its own), with blocks carved and channels scored on the full or on the carved network
measured on validation before and after recalibration. Every file is tensors or plain data."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from torch import nn

from kdlab import distill
from kdlab.core.train import accuracy, kd_finetuner, predict
from kdlab.infra import io
from kdlab.infra.schema import ParamsError, choice, no_duplicates, positive
from kdlab.pipeline.params import PRUNE_CRITERIA, ModelParams, Params
from kdlab.pipeline.spec import Subset
from kdlab.pipeline.workspace import build_model, context, model_from_checkpoint


@dataclasses.dataclass(frozen=True)
class Prune:
    #: the trade-off curve: pruned teachers of these sizes, multiples of the student's parameter count, each by
    #: the iterative route (``iterative``, ``steps`` pruning steps with ``finetune_steps`` KD steps between)
    sizes: list[float] = dataclasses.field(default_factory=lambda: [0.25, 0.5, 1.0, 1.5])
    #: the size at which the criteria are compared, each pruned one-shot
    criteria_size: float = 1.0
    criteria: list[str] = dataclasses.field(default_factory=lambda: ["l1", "taylor", "activation", "random"])
    #: the size at which channels scored on the carved network meet channels scored on the full one (diagnosis)
    small: float = 0.5
    iterative: str = "l1"
    steps: int = 4
    finetune_steps: int = 100
    calibration_images: int = 512
    #: training images whose batch statistics replace the BatchNorm running statistics
    recalibration_images: int = 2000
    max_ratio: float = 0.9

    def check(self, key: str) -> None:
        """Errors name ``<key>.<field>`` (``q23.prune.steps``)."""
        for c in self.criteria + [self.iterative]:
            choice(f"{key}.criteria", c, PRUNE_CRITERIA)
        if not self.sizes:
            raise ParamsError(f"{key}.sizes", "at least one size")
        no_duplicates(f"{key}.sizes", self.sizes)
        for v in (*self.sizes, self.criteria_size, self.small):
            positive(f"{key}.sizes", v)
        positive(f"{key}.steps", self.steps)
        positive(f"{key}.finetune_steps", self.finetune_steps, strict=False)
        positive(f"{key}.calibration_images", self.calibration_images)
        positive(f"{key}.recalibration_images", self.recalibration_images)
        if not 0 < self.max_ratio < 1:
            raise ParamsError(f"{key}.max_ratio", f"the largest fraction of a convolution's channels pruned: in "
                              f"(0, 1), got {self.max_ratio}")


def size_name(size: float) -> str:
    """``x0.25``, ``x1.0``: as DVC writes the size into a stage's command."""
    return f"x{float(size)}"


def cut_name(criterion: str, size: float, iterative: bool) -> str:
    """``l1-it-x0.5``: the pruned teacher of ``size`` student parameter counts by the iterative route with
    ``l1``; ``taylor-x1.0``: one-shot by ``taylor``."""
    return f"{criterion}{'-it' if iterative else ''}-{size_name(size)}"


def cuts(pr: Prune) -> list[str]:
    """Every pruned teacher :func:`run_prune` saves: the curve's (iterative) and the criteria's (one-shot)."""
    out = [cut_name(pr.iterative, s, True) for s in pr.sizes]
    out += [cut_name(c, pr.criteria_size, False) for c in pr.criteria]
    return list(dict.fromkeys(out))


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are the average over ``images`` (normalised) of
    its batch statistics in training mode: what a pruned network's statistics are, instead of the teacher's."""
    m = copy.deepcopy(model)
    bns = [x for x in m.modules() if isinstance(x, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the batches
    m.train()
    for start in range(0, len(images), batch_size):
        m(images[start:start + batch_size])
    for bn, mom in zip(bns, momenta):
        bn.momentum = mom
    return m.eval()


@dataclasses.dataclass(frozen=True)
class Cutting:
    """What :func:`run_prune` prunes and where it writes: the teacher file (trained with ``seed``, on ``subset``),
    the student whose parameter count is the unit of ``prune.sizes``, the blocks a carve keeps, the teacher's
    logit cache (KD between iterative steps), the pruned teachers' folder and the summary's file; ``key``: the
    study's prune section (errors name its keys); ``keep_key``: the key of ``keep``."""
    teacher: Path
    seed: int
    subset: Subset
    student: ModelParams
    keep: list
    cache: Path
    out: Path
    summary: Path
    rebuild: str
    key: str
    keep_key: str


def pruned_file(c: Cutting, cut: str) -> Path:
    return c.out / f"{cut}.pt"


def run_prune(p: Params, pr: Prune, c: Cutting) -> dict:
    """The pruned teachers (each saved recalibrated) and the diagnosis, as the module says."""
    from kdlab.core import channels
    from kdlab.core.models import count_params
    from kdlab.core.surgery import keep_blocks

    max_ratio = f"{c.key}.max_ratio"
    ctx = context(p, c.seed, c.subset)
    ckpt = io.load_torch(c.teacher, c.rebuild)
    teacher = model_from_checkpoint(ckpt, ctx)
    train, val = ctx.splits["train"], ctx.splits["val"]
    calib = (ctx.normalize(train["images"][:pr.calibration_images].to(ctx.device)),
             train["labels"][:pr.calibration_images].to(ctx.device))
    recal_images = ctx.normalize(train["images"][:pr.recalibration_images].to(ctx.device))
    unit = count_params(build_model(c.student, ctx))

    def target(size: float) -> int:
        return round(size * unit)

    def val_acc(model) -> float:
        return accuracy(predict(model, val["images"], val["labels"], ctx.normalize, p.train.eval_batch_size,
                                p.train.precision), val["labels"])

    rows = {}

    def measure(name, model, route, criterion, scored_on, histories=None):
        recal = recalibrate_bn(model, recal_images)
        rows[name] = {"route": route, "criterion": criterion, "scored_on": scored_on, "params": count_params(model),
                      "val_acc": val_acc(model), "val_acc_recalibrated": val_acc(recal)}
        if histories is not None:  # a start of pruned students: saved recalibrated
            io.save_torch({"arch": ckpt["arch"], "width": ckpt["width"], "in_channels": ckpt["in_channels"],
                           "classes": ckpt["classes"], "blocks": None, "pruning": histories,
                           "state_dict": recal.state_dict(), "cut": name, **rows[name]}, pruned_file(c, name))
        print(f"{name}: {rows[name]['params']:,} parameters, val {rows[name]['val_acc']:.4f}, after BatchNorm "
              f"recalibration {rows[name]['val_acc_recalibrated']:.4f}")

    def carve(model):
        return keep_blocks(model, c.keep, c.keep_key)

    measure("teacher", teacher, "none", None, None)
    # why pruned teachers start at chance: blocks carved, channels scored on the carved or on the full network
    carved = carve(teacher)
    measure("blocks", carved, "blocks", None, None)
    for crit in pr.criteria:
        m, _, _ = channels.prune_to(carved, crit, target(pr.small), calib, pr.max_ratio, seed=c.seed, key=max_ratio)
        measure(f"blocks+channels.{crit}-{size_name(pr.small)}", m, "blocks, then channels", crit, "carved")
        m, _, _ = channels.prune_to(teacher, crit, target(pr.small), calib, pr.max_ratio, seed=c.seed, key=max_ratio,
                                    transform=carve)
        measure(f"channels+blocks.{crit}-{size_name(pr.small)}", m, "channels, then blocks", crit, "full")
    # the criteria at one size, one-shot
    for crit in pr.criteria:
        m, hist, _ = channels.prune_to(teacher, crit, target(pr.criteria_size), calib, pr.max_ratio, seed=c.seed,
                                       key=max_ratio)
        measure(cut_name(crit, pr.criteria_size, False), m, "channels, one-shot", crit, "full", [hist])
    # the curve: every size by the iterative route, KD from the cached logits between its steps
    from kdlab.pipeline.cache import cached_batches

    kd_batches = cached_batches(p, ctx, c.cache, c.rebuild, c.teacher, c.seed, c.subset)
    for size in pr.sizes:
        between = kd_finetuner(distill.build("kd", p), kd_batches, pr.finetune_steps, c.student.lr, p.train,
                               ctx.device, ctx.precision)
        m, histories = channels.prune_iteratively(teacher, pr.iterative, target(size), calib, pr.steps, between,
                                                  pr.max_ratio, seed=c.seed)
        measure(cut_name(pr.iterative, size, True), m, f"channels, {pr.steps} steps with KD between", pr.iterative,
                "full", histories)
    out = {"student_params": unit, "targets": {size_name(s): target(s) for s in {*pr.sizes, pr.criteria_size,
                                                                                   pr.small}},
           "cuts": cuts(pr), "models": rows}
    io.save_json(out, c.summary)
    return out
