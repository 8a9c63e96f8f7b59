"""Shared by the feature methods (fitnet, at): the teacher runs on the student's very view at every step,
both models are tapped at ``stages`` (module paths), and the feature term is added to CE (and KD from the
teacher's online logits when ``kd`` is true, with loss.alpha and loss.temperature)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kdlab.distill.kd import KD
from kdlab.features import Taps, check_paths


@dataclass(frozen=True)
class FeatureOptions:
    stages: list[str] = field(default_factory=lambda: ["layer3"])
    beta: float = 1.0
    kd: bool = True


def same_size(fs: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger feature map to the smaller one's resolution (a no-op for equal sizes)."""
    h = min(fs.shape[-2], ft.shape[-2]), min(fs.shape[-1], ft.shape[-1])
    if fs.shape[-2:] != h:
        fs = F.adaptive_avg_pool2d(fs, h)
    if ft.shape[-2:] != h:
        ft = F.adaptive_avg_pool2d(ft, h)
    return fs, ft


class FeatureMethod(KD):
    uses_teacher_logits = False
    uses_teacher_model = True
    Options = FeatureOptions
    #: the name of the feature term in the returned terms (and in MLflow)
    term = "feature"
    #: taps are hooks added and removed at every step, which torch.compile would retrace each time
    compilable = False

    def check(self, opts) -> None:
        if not opts.stages:
            raise self.fail("stages", "is empty; list the stages to tap, e.g. [layer3]")
        if opts.beta < 0:
            raise self.fail("beta", f"must be >= 0, got {opts.beta}")

    def attach(self, student, teacher, example):
        super().attach(student, teacher, example)
        key = f"methods.{self.name}.stages"
        check_paths(student, self.opts.stages, key, "student")
        check_paths(teacher, self.opts.stages, key, "teacher")
        was_training = student.training
        student.eval()
        with torch.no_grad():
            _, _, fs, ft = self.pair(student, example)
        student.train(was_training)
        self.build(fs, ft)

    def build(self, fs: list[torch.Tensor], ft: list[torch.Tensor]) -> None:
        """Create trainable parts from example features (student, teacher) at each stage."""

    def pair(self, student, images):
        """(student logits, teacher logits, student features, teacher features) on ``images``."""
        with Taps(student, self.opts.stages) as ts:
            logits = student(images)
        with torch.no_grad(), Taps(self.teacher, self.opts.stages) as tt:
            teacher_logits = self.teacher(images)
        stages = self.opts.stages
        return logits, teacher_logits, [ts.out[s] for s in stages], [tt.out[s] for s in stages]

    def feature_loss(self, fs: list[torch.Tensor], ft: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, student, batch):
        logits, teacher_logits, fs, ft = self.pair(student, batch.images)
        if self.opts.kd:
            terms = self.kd_terms(logits, teacher_logits, batch.labels)
        else:
            terms = {"ce": self.ce(logits, batch.labels)}
        terms[self.term] = self.opts.beta * self.feature_loss(fs, ft)
        return logits, terms
