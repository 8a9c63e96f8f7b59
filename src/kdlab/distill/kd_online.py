"""Hinton KD with the teacher run at every step on fresh random views (any of the V views, not only the
cached K): the classic way, against which the cached, view-consistent ``kd`` is compared on accuracy and
speed. Same loss and weights as :mod:`kd` (loss.alpha, loss.temperature)."""
import torch

from kdlab.distill import register
from kdlab.distill.kd import KD


@register("kd_online")
class KDOnline(KD):
    uses_teacher_logits = False
    uses_teacher_model = True
    views = "all"

    def forward(self, student, batch):
        with torch.no_grad():
            teacher_logits = self.teacher(batch.images)
        logits = student(batch.images)
        return logits, self.kd_terms(logits, teacher_logits, batch.labels)
