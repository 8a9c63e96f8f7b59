"""Decoupled KD (Zhao et al. 2022), from cached logits. The KD loss splits into a target-class term
(TCKD: KL between the binary [p_target, 1 - p_target] distributions) and a non-target term (NCKD: KL between
the distributions over the other classes), with KD = TCKD + (1 - p_teacher_target) * NCKD. DKD weighs
them alpha and beta instead, ramped in linearly per step over the first ``warmup`` epochs (the paper: 20 of
240, by epoch; here per step, so that no step before the end of the warm-up has the full weight); CE keeps weight
1. Temperature: loss.temperature."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdlab.distill import register
from kdlab.distill._base import Method


@dataclass(frozen=True)
class DKDOptions:
    alpha: float = 1.0
    beta: float = 8.0
    warmup: float = 1.0   # epochs (a fraction of one allowed), ramped per step


def tckd_nckd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample TCKD and NCKD, each scaled by T^2."""
    s = student_logits.float() / temperature
    t = teacher_logits.float() / temperature
    target = F.one_hot(labels, s.shape[1]).bool()
    log_ps, log_pt = F.log_softmax(s, dim=1), F.log_softmax(t, dim=1)
    # binary distributions [p_target, p_rest], in log space
    ls_gt, lt_gt = log_ps[target], log_pt[target]
    ls_bin = torch.stack([ls_gt, torch.log1p(-ls_gt.exp().clamp(max=1 - 1e-7))], dim=1)
    lt_bin = torch.stack([lt_gt, torch.log1p(-lt_gt.exp().clamp(max=1 - 1e-7))], dim=1)
    tckd = (lt_bin.exp() * (lt_bin - ls_bin)).sum(dim=1)
    # distributions over the non-target classes (target masked out before the softmax)
    ls_nt = F.log_softmax(s - 1000.0 * target, dim=1)
    lt_nt = F.log_softmax(t - 1000.0 * target, dim=1)
    nckd = (lt_nt.exp() * (lt_nt - ls_nt)).masked_fill(target, 0.0).sum(dim=1)
    return tckd * temperature ** 2, nckd * temperature ** 2


@register("dkd")
class DKD(Method):
    uses_teacher_logits = True
    Options = DKDOptions

    def check(self, opts):
        for k in ("alpha", "beta"):
            if getattr(opts, k) < 0:
                raise self.fail(k, f"must be >= 0, got {getattr(opts, k)}")
        if opts.warmup < 0:
            raise self.fail("warmup", f"must be >= 0 epochs, got {opts.warmup}")

    def __init__(self, loss, options=None, label_smoothing=0.0, **overrides):
        super().__init__(loss, options, label_smoothing, **overrides)
        # a tensor, not a Python float: a compiled step would be recompiled for every new value
        self.register_buffer("ramp", torch.ones(()), persistent=False)
        self.begin_step(1.0)

    def begin_step(self, progress: float) -> None:
        """``progress``: epochs trained, the coming step included; the weight is ``progress / warmup``, at most 1."""
        self.ramp.fill_(min(progress / self.opts.warmup, 1.0) if self.opts.warmup > 0 else 1.0)

    def forward(self, student, batch):
        logits = student(batch.images)
        tckd, nckd = tckd_nckd(logits, batch.teacher_logits, batch.labels, self.loss.temperature)
        return logits, {"ce": self.ce(logits, batch.labels), "tckd": self.ramp * self.opts.alpha * tckd.mean(),
                        "nckd": self.ramp * self.opts.beta * nckd.mean()}
