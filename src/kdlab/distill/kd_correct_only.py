"""KD only where the teacher is right (the founding note's question 1).

On samples whose view the teacher classifies correctly: the KD loss of :mod:`kd`. On the rest: plain
CE with full weight, so a wrong teacher never pulls the student away from the label. Both terms are
averaged over the whole batch, so they add up to the per-sample loss mean.
"""
from kdlab.distill import register
from kdlab.distill.kd import KD, kl_per_sample


@register("kd_correct_only")
class KDCorrectOnly(KD):
    def forward(self, student, batch):
        logits = student(batch.images)
        correct = (batch.teacher_logits.argmax(dim=1) == batch.labels).float()
        ce = self.ce(logits, batch.labels, reduction="none")
        kd = kl_per_sample(logits, batch.teacher_logits, self.temperature)
        ce_weight = 1 - self.alpha * correct
        return logits, {"ce": (ce_weight * ce).mean(), "kd": (self.alpha * correct * kd).mean()}
