"""A control for question 1b, the mirror of ``kd_correct_only``: the KD loss of :mod:`kd` only on the views the
teacher classifies wrongly; plain CE with full weight on the rest. If KD helped only through the teacher's
correct answers, this would do no better than the labels alone."""
from kdlab.distill import register
from kdlab.distill.kd import KD, kl_per_sample


@register("kd_wrong_only")
class KDWrongOnly(KD):
    def forward(self, student, batch):
        logits = student(batch.images)
        wrong = (batch.teacher_logits.argmax(dim=1) != batch.labels).float()
        ce = self.ce(logits, batch.labels, reduction="none")
        kd = kl_per_sample(logits, batch.teacher_logits, self.temperature)
        return logits, {"ce": ((1 - self.alpha * wrong) * ce).mean(), "kd": (self.alpha * wrong * kd).mean()}
