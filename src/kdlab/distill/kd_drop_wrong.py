"""A control for question 1b: drop the views the teacher gets wrong. On the views it classifies correctly, the
loss of :mod:`kd`; the others contribute nothing (neither CE nor KD). Both terms are averaged over the whole
batch, as in ``kd_correct_only``, so a batch with dropped views takes a smaller step."""
from kdlab.distill import register
from kdlab.distill.kd import KD, kl_per_sample


@register("kd_drop_wrong")
class KDDropWrong(KD):
    def forward(self, student, batch):
        logits = student(batch.images)
        correct = (batch.teacher_logits.argmax(dim=1) == batch.labels).float()
        ce = self.ce(logits, batch.labels, reduction="none")
        kd = kl_per_sample(logits, batch.teacher_logits, self.temperature)
        return logits, {"ce": ((1 - self.alpha) * correct * ce).mean(), "kd": (self.alpha * correct * kd).mean()}
