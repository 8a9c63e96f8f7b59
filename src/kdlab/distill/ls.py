"""Label smoothing: the student on the labels alone, each target mixed with the uniform distribution by
``methods.ls.smoothing`` (Szegedy et al. 2016). The control for KD's regularisation alone: a soft target that
carries no knowledge of which wrong classes are close (Yuan et al. 2020, "teacher-free" KD)."""
import dataclasses

from torch import nn

from kdlab.distill import register
from kdlab.distill._base import Method


@register("ls")
class LabelSmoothing(Method):
    @dataclasses.dataclass(frozen=True)
    class Options:
        smoothing: float = 0.1

    def check(self, opts) -> None:
        if not 0 < opts.smoothing < 1:
            raise self.fail("smoothing", f"{opts.smoothing} is not in (0, 1)")

    def forward(self, student, batch):
        logits = student(batch.images)
        return logits, {"ce": nn.functional.cross_entropy(logits, batch.labels, label_smoothing=self.opts.smoothing)}
