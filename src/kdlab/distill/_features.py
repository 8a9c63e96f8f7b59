"""Shared by the feature methods (fitnet, at): both models are tapped at ``layers`` (module paths) on the
student's very view at every step, and the feature term is added to CE (and, when ``kd`` is true, KD from the
cached teacher logits of that view, with loss.alpha and loss.temperature). The taps are torch.fx extractors,
so the whole step compiles, and the teacher's runs only as deep as the deepest tapped layer."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kdlab.core.features import OUTPUT, check_paths, extractor
from kdlab.distill.kd import KD


@dataclass(frozen=True)
class FeatureOptions:
    layers: list[str] = field(default_factory=lambda: ["layer3"])
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
    uses_teacher_model = True
    Options = FeatureOptions
    #: the name of the feature term in the returned terms (and in MLflow)
    term = "feature"

    def __init__(self, loss, options=None, label_smoothing=0.0, **overrides):
        super().__init__(loss, options, label_smoothing, **overrides)
        # the cache holds the teacher's logits of every view a student sees: no need to run its head here
        self.uses_teacher_logits = self.opts.kd
        # (student, teacher) extractors and the student they tap; lists, so they are not our parameters
        self._taps: list[torch.nn.Module] = []
        self._student: list[torch.nn.Module] = []

    def check(self, opts) -> None:
        if not opts.layers:
            raise self.fail("layers", "is empty; list the layers to tap, e.g. [layer3]")
        if opts.beta < 0:
            raise self.fail("beta", f"must be >= 0, got {opts.beta}")

    def attach(self, student, teacher, example, labels=None):
        super().attach(student, teacher, example, labels)
        # what a build() that measures the teacher reads (fitnet_select's loss importance), dropped after it
        self._calibration = (example, labels)
        key = f"methods.{self.name}.layers"
        check_paths(student, self.opts.layers, key, "student")
        check_paths(teacher, self.opts.layers, key, "teacher")
        self._taps = [extractor(student, self.opts.layers), extractor(teacher, self.opts.layers, output=False)]
        self._student = [student]
        was_training = student.training
        self._taps[0].eval()
        with torch.no_grad():
            _, fs, ft = self.tapped(example)
        self._taps[0].train(was_training)
        self.build(fs, ft)
        self._calibration = None

    def train(self, mode: bool = True):
        super().train(mode)
        if self._taps:  # the student's extractor follows the training mode (the teacher stays in eval)
            self._taps[0].train(mode)
        return self

    def build(self, fs: list[torch.Tensor], ft: list[torch.Tensor]) -> None:
        """Create trainable parts from example features (student, teacher) at each layer."""

    def tapped(self, images):
        """(student logits, student features, teacher features) on ``images``."""
        s = self._taps[0](images)
        with torch.no_grad():
            t = self._taps[1](images)
        return s[OUTPUT], [s[p] for p in self.opts.layers], [t[p] for p in self.opts.layers]

    def feature_loss(self, fs: list[torch.Tensor], ft: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, student, batch):
        if not self._student or student is not self._student[0]:
            raise RuntimeError(f"{self.name}: called with another student than the one attached")
        logits, fs, ft = self.tapped(batch.images)
        if self.opts.kd:
            terms = self.kd_terms(logits, batch.teacher_logits, batch.labels)
        else:
            terms = {"ce": self.ce(logits, batch.labels)}
        terms[self.term] = self.opts.beta * self.feature_loss(fs, ft)
        return logits, terms
